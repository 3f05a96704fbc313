"""The Lua scripts of :mod:`projections.redis_store`, kept apart so the store module reads as Python.

Every key a script touches arrives in ``KEYS``; ops refer to keys by their index in ``KEYS``. Positions
are non-negative integers as decimal strings, compared as strings (length first) because Lua numbers
are doubles and server commit positions may exceed 2**53.
"""

from __future__ import annotations

#: KEYS[1] position key, KEYS[2] lease key, KEYS[3..] keys the ops refer to by index.
#: ARGV[1] expected stored position ('' = none), ARGV[2] new position, ARGV[3] lease owner ('' = do not
#: check), ARGV[4] the ops as one JSON array (see ``redis_store._encode``): one argument instead of ~40
#: per event, because packing arguments dominated the client's cost. Numbers that must stay exact
#: (scores, amounts, times) travel as strings; only KEYS indexes are JSON numbers.
#: Returns {1, errors, first_error} applied · {-1, ''} lease not held · {0, stored} conflict.
APPLY_BATCH = r"""
-- The lease first: a stale owner is told so, rather than sent to re-read a position it may not write.
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[3] then
  return {-1, ''}
end
local stored = redis.call('GET', KEYS[1])
if (stored or '') ~= ARGV[1] then
  return {0, stored or ''}
end
-- Decoded before any write, so a malformed batch fails with nothing applied.
local ops = cjson.decode(ARGV[4])
-- The position is the first write: if the server refuses writes (OOM under noeviction) nothing at all
-- is applied and the caller sees an error, instead of ops failing one by one below.
redis.call('SET', KEYS[1], ARGV[2])

local errors, first_error = 0, ''
local function run(...)
  local r = redis.pcall(...)
  -- A failing op (WRONGTYPE from a projector bug) must not abort the script half way: Redis does not
  -- roll back, so an abort would leave part of the batch applied under the old position and a retry
  -- would apply it twice. Apply the rest, keep the position, report the error.
  if type(r) == 'table' and r.err then
    errors = errors + 1
    if first_error == '' then first_error = r.err end
  end
  return r
end

for _, op in ipairs(ops) do
  local name, key = op[1], KEYS[op[2]]
  if name == 'HSET' or name == 'HDEL' then
    run(name, key, unpack(op[3]))
  elseif name == 'DEL' then
    run('DEL', key)
  elseif name == 'ZADD' or name == 'ZREMRANGEBYSCORE' or name == 'HINCRBY' or name == 'HINCRBYFLOAT' then
    run(name, key, op[3], op[4])
  elseif name == 'ZREM' or name == 'EXPIREAT' then
    run(name, key, op[3])
  elseif name == 'MOVE' then
    local field, member, to, score = op[3], op[4], op[5], op[6]
    local old = run('HGET', key, field)
    if type(old) ~= 'string' then old = nil end
    local from_keys, to_keys = {}, {}
    for _, candidate in ipairs(op[7]) do
      local value = candidate[1]
      for _, index in ipairs(candidate[2]) do
        if value == old then from_keys[#from_keys + 1] = KEYS[index] end
        if value == to then to_keys[#to_keys + 1] = KEYS[index] end
      end
    end
    if score == '' then
      score = '0'
      for _, index in ipairs(from_keys) do
        local s = run('ZSCORE', index, member)
        if type(s) == 'string' then score = s; break end
      end
    end
    for _, index in ipairs(from_keys) do run('ZREM', index, member) end
    for _, index in ipairs(to_keys) do run('ZADD', index, score, member) end
    if to == '' then run('HDEL', key, field) else run('HSET', key, field, to) end
  else
    -- unreachable: the encoder only emits the ops above
    errors = errors + 1
    if first_error == '' then first_error = 'unknown op ' .. tostring(name) end
  end
end
return {1, tostring(errors), first_error}
"""

#: KEYS[1] active key, KEYS[2] position key of the new generation, KEYS[3] lease key.
#: ARGV[1] expected active ('' = none), ARGV[2] new generation, ARGV[3] least position the new generation
#: must have applied ('' = no requirement), ARGV[4] lease owner ('' = do not check).
#: Returns {1} switched · {0, active} changed · {-1, position} not caught up · {-2, ''} lease not held.
SET_ACTIVE = r"""
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[4] then return {-2, ''} end
local active = redis.call('GET', KEYS[1])
if (active or '') ~= ARGV[1] then return {0, active or ''} end
if ARGV[3] ~= '' then
  local p = redis.call('GET', KEYS[2])
  if not p or #p < #ARGV[3] or (#p == #ARGV[3] and p < ARGV[3]) then return {-1, p or ''} end
end
redis.call('SET', KEYS[1], ARGV[2])
return {1, ARGV[2]}
"""

#: KEYS[1] lease key; ARGV[1] owner, ARGV[2] ttl in ms. 1 when renewed, 0 when someone else holds it.
RENEW_LEASE = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

#: KEYS[1] lease key; ARGV[1] owner. 1 when released, 0 when not ours (any more).
RELEASE_LEASE = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

#: KEYS[1] generation counter; ARGV[1] the highest generation known to exist. A generation number is
#: never handed out twice, so deleting a retired generation can never hit a later one's keys, however
#: late the deleting process runs (a paused owner that wakes up). Returns the new number.
ALLOCATE_GENERATION = r"""
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[1])
if n < floor then n = floor end
n = n + 1
redis.call('SET', KEYS[1], tostring(n))
return n
"""

#: KEYS[1] rebuild record, KEYS[2] generation counter, KEYS[3] lease key.
#: ARGV[1] lease owner ('' = do not check), ARGV[2] the highest generation known to exist.
#: Returns {1, target} recorded · {0, target} one is recorded already · {-1, ''} lease not held.
BEGIN_REBUILD = r"""
if ARGV[1] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[1] then return {-1, ''} end
local recorded = redis.call('GET', KEYS[1])
if recorded then return {0, recorded} end
local n = tonumber(redis.call('GET', KEYS[2]) or '0')
local floor = tonumber(ARGV[2])
if n < floor then n = floor end
n = n + 1
redis.call('SET', KEYS[2], tostring(n))
redis.call('SET', KEYS[1], tostring(n))
return {1, tostring(n)}
"""

#: KEYS[1] rebuild record, KEYS[2] active key. ARGV[1] target. Clears the record once its target serves
#: (whoever runs it, and however late: the condition is the whole truth). Returns 1 when cleared.
FINISH_REBUILD = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

#: KEYS[1] rebuild record, KEYS[2] active key, KEYS[3] target position key, KEYS[4] lease key.
#: ARGV[1] target, ARGV[2] lease owner ('' = do not check). Drops the record and the target's position
#: (its keys are then garbage, deleted by the caller) only while the owner holds the lease, the record
#: names the target and the target does not serve. Returns 1 when abandoned.
ABANDON_REBUILD = r"""
if ARGV[2] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[2] then return 0 end
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('GET', KEYS[2]) == ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[3])
return 1
"""
