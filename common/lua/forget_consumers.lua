-- forget_consumers: delete the group's other consumers that own no pending entry and were idle long enough
-- (killed workers cannot leave the group themselves); check and delete in one step.
-- KEYS[1]  frames stream
-- ARGV[1]  the group   ARGV[2]  min idle ms   ARGV[3]  this consumer (never deleted)
-- Returns  how many consumers were deleted
local gone = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['name'] ~= ARGV[3] and f['pending'] == 0 and f['idle'] >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    gone = gone + 1
  end
end
return gone
