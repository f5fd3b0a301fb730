"""The submission side of rstream. No torch import: a web host can submit jobs."""
