"""The Lua scripts of the job store (``store.py``): each update of a job record is one of them,
atomic in Redis, so a redelivered chunk, a duplicate send or a retried call after a dropped
reply never counts anything twice."""

# The sent hash keeps when each chunk was last sent, in Redis's own clock (the sweeper
# compares against the same clock, whatever the producers' clocks say).
MARK_SENT = """
local now = redis.call('TIME')[1]
if redis.call('HSETNX', KEYS[2], ARGV[1], now) == 0 then
  redis.call('HSET', KEYS[2], ARGV[1], now)
  return 0
end
redis.call('HINCRBY', KEYS[1], 'outstanding', 1)
if ARGV[3] == '0' then
  redis.call('HINCRBY', KEYS[1], 'chunks', 1)
  redis.call('HINCRBY', KEYS[1], 'images', ARGV[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[4]); redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""

# The one "job is done" rule: nothing outstanding, the producer has finished sending, and the
# job is running, or failed as a whole and not finished yet (every image still gets its line).
# The script that makes it true marks the job done (a failed job stays failed), sets
# finished_at and returns 1, so exactly one caller writes the manifest.
FINISH_IF_DONE = """
local function finish_if_done(key, now)
  local status = redis.call('HGET', key, 'status')
  if tonumber(redis.call('HGET', key, 'outstanding')) <= 0
     and redis.call('HGET', key, 'submitting') == '0'
     and (status == 'running'
          or (status == 'failed' and redis.call('HEXISTS', key, 'finished_at') == 0)) then
    if status == 'running' then redis.call('HSET', key, 'status', 'done') end
    redis.call('HSET', key, 'finished_at', now)
    return 1
  end
  return 0
end
"""

FAIL = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'failed', 'last_error', ARGV[1], 'updated_at', ARGV[2])
return 1
"""

CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 1
"""

COMPLETE = FINISH_IF_DONE + """
if redis.call('HEXISTS', KEYS[4], ARGV[1]) == 0 then return -1 end
local first = redis.call('HSETNX', KEYS[2], ARGV[1], 1)
if first == 1 then redis.call('HINCRBY', KEYS[1], 'outstanding', -1) end
local new = cjson.decode(ARGV[3])
local ok, failed = new['ok'], new['failed']
local old = redis.call('HGET', KEYS[3], ARGV[2])
if old then
  old = cjson.decode(old)
  ok = ok - old['ok']; failed = failed - old['failed']
end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('HINCRBY', KEYS[1], 'ok', ok)
redis.call('HINCRBY', KEYS[1], 'failed', failed)
redis.call('HSET', KEYS[1], 'updated_at', ARGV[4])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
if first == 1 then return finish_if_done(KEYS[1], ARGV[4]) end
return 0
"""

END_SUBMIT = FINISH_IF_DONE + """
redis.call('HSET', KEYS[1], 'submitting', '0', 'updated_at', ARGV[1])
return finish_if_done(KEYS[1], ARGV[1])
"""

RECORD_FAILURE = """
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'stalled_chunks', 1)
end
redis.call('HSET', KEYS[1], 'last_error', ARGV[2], 'updated_at', ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 0
"""

# A retry reopens a finished job in one step: of concurrent retries one gets the new
# generation; the others see it running. A cancelled job is not reopened (-2), nor one that
# runs (-1); 0 when there is no such job.
START_RETRY = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
if status == 'running' then return -1 end
if status == 'cancelled' then return -2 end
local generation = redis.call('HINCRBY', KEYS[1], 'generation', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'submitting', 1, 'updated_at', ARGV[1])
redis.call('HDEL', KEYS[1], 'finished_at')
return generation
"""

# Cancel only what runs, in one step: a job that finished meanwhile stays done.
CANCEL = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1], 'updated_at', ARGV[1])
return 1
"""
