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
#: Returns {1, errors, first_error} applied · {0, stored} conflict · {-1, ''} lease not held.
APPLY_BATCH = r"""
local stored = redis.call('GET', KEYS[1])
if (stored or '') ~= ARGV[1] then
  return {0, stored or ''}
end
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[3] then
  return {-1, ''}
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

#: KEYS[1] active key, KEYS[2] position key of the new generation.
#: ARGV[1] expected active ('' = none), ARGV[2] new generation, ARGV[3] least position the new generation
#: must have applied ('' = no requirement). Returns {1} switched · {0, active} changed · {-1, position}.
SET_ACTIVE = r"""
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
