"""The training loop's mechanics on stand-in modules: clipping, out-of-memory splits, the
learning-rate schedule, weight decay groups, the full mode, augmentation, AMP on CUDA."""

from __future__ import annotations

import itertools
import logging
from typing import Any
from unittest import mock

import pytest
import torch
from torch import nn

from rstream.shared.training.config import TrainConfig
from rstream.worker.finetune import dataset
from rstream.worker.finetune.loop import Stepper, prepare, train_epoch
from rstream.worker.finetune.optimizer import make_optimizer, make_schedule, rate_factor
from rstream.worker.model.loader import build
from rstream.worker.model.preprocess import Preprocessing

SPEC = Preprocessing(resize=4, crop=4)
PLAIN = {"lr_fc": 1.0, "momentum": 0.0, "weight_decay": 0.0, "label_smoothing": 0.0,
         "schedule": "constant", "warmup_epochs": 0, "epochs": 1}


class OutOfMemoryAbove(nn.Module):
    """A linear classifier that raises CUDA's out-of-memory error for batches above ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * 4 * 4, 3)
        self.limit = limit
        self.sizes: list[int] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(images))
        if len(images) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (stand-in)")
        return self.fc(images.flatten(1))


def data(batches: int = 2, size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 256, (size, 3, 4, 4), dtype=torch.uint8, generator=generator),
             torch.randint(0, 3, (size,), generator=generator)) for _ in range(batches)]


def stepper_for(module: nn.Module, **options: Any) -> Stepper:
    config = TrainConfig(mode="full", **{**PLAIN, **options})
    groups = [{"name": "fc", "params": list(module.parameters()), "lr": config.lr_fc}]
    optimizer = make_optimizer(groups, config)
    return Stepper(optimizer, make_schedule(optimizer, config, 2),
                   torch.amp.GradScaler("cpu", enabled=False), config)


def run_epoch(module: nn.Module, stepper: Stepper,
              loader: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
    train_epoch(module, loader or data(), SPEC, stepper=stepper, device=torch.device("cpu"),
                epoch=1, progress=lambda *_: None)


def flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


@pytest.mark.parametrize(("max_norm", "clipped"), [(0.01, True), (0.0, False)])
def test_gradients_are_clipped_to_max_grad_norm_and_zero_turns_it_off(
        max_norm: float, clipped: bool) -> None:
    module = OutOfMemoryAbove(limit=64)
    before = flat(module)
    stepper = stepper_for(module, max_grad_norm=max_norm)

    run_epoch(module, stepper, data(batches=1))

    moved = float((flat(module) - before).norm())  # lr 1, plain SGD: the step is the gradient
    if clipped:
        assert moved == pytest.approx(max_norm, rel=1e-4)
    else:
        assert moved > 10 * 0.01


def test_out_of_memory_halves_the_batch_and_keeps_the_same_step(
        caplog: pytest.LogCaptureFixture) -> None:
    roomy, tight = OutOfMemoryAbove(limit=64), OutOfMemoryAbove(limit=4)
    tight_stepper = stepper_for(tight)

    with caplog.at_level(logging.WARNING):
        run_epoch(roomy, stepper_for(roomy))
        run_epoch(tight, tight_stepper)

    assert tight_stepper.pieces == 2
    assert tight.sizes == [8, 4, 4, 4, 4]  # one failed batch of 8, then halves from then on
    assert torch.allclose(flat(tight), flat(roomy), atol=1e-6)  # the same two steps
    assert "out of memory on a batch of 8 images: trying again in 2 pieces" in caplog.text


def test_out_of_memory_on_a_single_image_is_raised() -> None:
    module = OutOfMemoryAbove(limit=0)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_epoch(module, stepper_for(module))
    assert module.sizes == [8, 4, 2, 1]


def test_the_rate_warms_up_then_follows_a_cosine_to_zero() -> None:
    factors = [rate_factor(step, 10, 110, "cosine") for step in range(110)]
    assert factors[0] == pytest.approx(0.01)
    assert factors[5] == pytest.approx(0.01 + 0.99 * 0.5)
    assert factors[10] == pytest.approx(1.0)
    assert factors[60] == pytest.approx(0.5)
    assert factors[-1] < 0.001
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
    assert rate_factor(80, 10, 110, "constant") == 1.0


def test_the_schedule_steps_the_optimizer_rate_and_caps_the_warm_up_at_half_the_run() -> None:
    module = nn.Linear(2, 2)
    config = TrainConfig(lr_fc=0.1, epochs=2, warmup_epochs=5)
    optimizer = make_optimizer([{"name": "fc", "params": list(module.parameters()),
                                 "lr": 0.1}], config)
    schedule = make_schedule(optimizer, config, steps_per_epoch=4)  # 8 steps, 4 warm
    rates = []
    for _ in range(8):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == pytest.approx(0.001)
    assert rates[4] == pytest.approx(0.1)
    assert rates[1] < rates[2] < rates[3] < rates[4] > rates[5] > rates[6] > rates[7]


def test_weight_decay_spares_norms_and_biases() -> None:
    module = build("resnet18", 4)
    config = TrainConfig(mode="full", weight_decay=5e-4)
    optimizer = make_optimizer(prepare(module, 4, False, config), config)

    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(module.named_parameters())
    assert set(decay) == {id(p) for p in named.values()}
    for name, parameter in named.items():
        expected = 0.0 if name.endswith("bias") or ".bn" in name or name.startswith("bn") \
            or "downsample.1" in name else 5e-4
        assert decay[id(parameter)] == expected, name


def test_full_mode_trains_every_layer_at_the_fc_rate() -> None:
    module = build("resnet18", 4)
    config = TrainConfig(mode="full", lr_fc=0.05, lr_layer4=0.001)
    groups = prepare(module, 4, False, config)
    assert all(p.requires_grad for p in module.parameters())
    assert {g["name"] for g in groups} == {"fc", "conv1", "bn1", "layer1", "layer2", "layer3",
                                           "layer4"}
    assert {g["lr"] for g in groups} == {0.05}


@pytest.mark.parametrize(("size", "floor"), [
    ((500, 375), 0.08), ((4000, 3000), 0.08), ((200, 200), 112**2 / 200**2), ((112, 112), 1.0),
    ((32, 32), 1.0)])
def test_the_crop_scale_floor_follows_the_image_size(size: tuple[int, int],
                                                     floor: float) -> None:
    assert dataset.scale_floor(*size) == pytest.approx(floor)


def test_augmentation_uses_the_floor_or_the_set_scale_and_flips_as_told() -> None:
    image = torch.zeros(3, 160, 160, dtype=torch.uint8)
    image[:, :, 80:] = 255  # left half black, right half white
    spy = mock.Mock(side_effect=lambda img, scale, ratio: (0, 0, 160, 160))
    with mock.patch.object(dataset.transforms.RandomResizedCrop, "get_params", spy):
        kept = dataset.Augmentation(160, flip=0.0)(image)
        flipped = dataset.Augmentation(160, scale=(0.5, 0.9), ratio=(1.0, 1.0), flip=1.0)(image)
    assert [call.args[1:] for call in spy.call_args_list] == [
        ([112**2 / 160**2, 1.0], [0.75, 4 / 3]), ([0.5, 0.9], [1.0, 1.0])]
    assert torch.equal(kept, image)
    assert torch.equal(flipped, image.flip(-1))


@pytest.mark.gpu
def test_amp_with_grad_scaler_trains_on_cuda() -> None:
    device = torch.device("cuda")
    module = build("resnet18", 3).to(device).to(memory_format=torch.channels_last)
    config = TrainConfig(mode="full", lr_fc=0.01, precision="fp16", epochs=1,
                         schedule="constant", warmup_epochs=0, label_smoothing=0.0)
    optimizer = make_optimizer(prepare(module, 3, False, config), config)
    stepper = Stepper(optimizer, make_schedule(optimizer, config, 1),
                      torch.amp.GradScaler("cuda"), config)
    batch = data(batches=1, size=16)[0]
    spec = Preprocessing(resize=64, crop=64)
    images = torch.nn.functional.interpolate(batch[0].float(), size=64).to(torch.uint8)
    losses = []
    for _ in range(8):
        stats = train_epoch(module, [(images, batch[1])], spec, stepper=stepper, device=device,
                            epoch=1, progress=lambda *_: None)
        losses.append(stats["loss"])
    assert stepper.scaler.is_enabled() and stepper.scaler.get_scale() > 0
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert losses[-1] < losses[0]
