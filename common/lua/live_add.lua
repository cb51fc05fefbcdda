-- live_add: add one camera frame, keep the live cap (at most maxlen undelivered frames) and trim what the group
-- has acked.
-- KEYS[1]  frames stream   KEYS[2]  meta hash   KEYS[3]  undelivered ids (list, oldest first)
-- ARGV[1]  the group       ARGV[2]  maxlen      ARGV[3]  frame field   ARGV[4]  frame payload
-- ARGV[5]  this call's key (publisher token:seq) ARGV[6]  the frame's seq
-- Returns  {id, produced, trimmed}; {'', produced, 0, 'taken'} when the frame's seq is not the source's next one
--          (another producer of the source added frames: a rolling update), so the caller numbers it again and
--          no two frames share a seq; {'', produced, 0} when ARGV[5] is the last key added: a re-send of the same
--          frame after a lost reply, which adds nothing. Keyed by publisher, not by seq: two cameras writing one
--          source number from the same count.
--! include entry_ids
if redis.call('HGET', KEYS[2], 'last_add') == ARGV[5] then
  return {'', tonumber(redis.call('HGET', KEYS[2], 'produced')), 0}
end
local next_seq = tonumber(redis.call('HGET', KEYS[2], 'produced') or '0')
if tonumber(ARGV[6]) ~= next_seq then
  return {'', next_seq, 0, 'taken'}
end
local id = redis.call('XADD', KEYS[1], '*', ARGV[3], ARGV[4])
local produced = redis.call('HINCRBY', KEYS[2], 'produced', 1)
redis.call('HSET', KEYS[2], 'last_add', ARGV[5])
redis.call('RPUSH', KEYS[3], id)
local last = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, delivered
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then delivered = g[i + 1] end
  end
  if name == ARGV[1] then last = delivered end
end
if last then
  while true do
    local head = redis.call('LINDEX', KEYS[3], 0)
    if not head or not le(head, last) then break end
    redis.call('LPOP', KEYS[3])
  end
end
local trimmed = 0
local maxlen = tonumber(ARGV[2])
while redis.call('LLEN', KEYS[3]) > maxlen do
  trimmed = trimmed + redis.call('XDEL', KEYS[1], redis.call('LPOP', KEYS[3]))
end
if trimmed > 0 then redis.call('HINCRBY', KEYS[2], 'dropped_trimmed', trimmed) end
if last and last ~= '0-0' then
  local ms, seq = split(last)
  local minid = string.sub(last, 1, string.find(last, '-', 1, true) - 1) .. '-' .. string.format('%d', seq + 1)
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1])
  if pending[1] > 0 and not le(minid, pending[2]) then minid = pending[2] end
  redis.call('XTRIM', KEYS[1], 'MINID', minid)
end
return {id, produced, trimmed}
