-- file_lag_trim: a file source's lag, and a trim of what every group has delivered and acked, in one step so that
-- no delivery can happen between reading and trimming.
-- KEYS[1]  frames stream   KEYS[2]  meta hash
-- ARGV[1]  the group       ARGV[2]  the run's epoch
-- Trims entries before each group's next undelivered entry and its oldest pending one: another group (an
-- archiver, say) keeps what it has not read, a group rewound with XGROUP SETID keeps what became undelivered
-- again, and a pending entry (a worker holds it, or the janitor will reclaim it) is never trimmed.
-- Returns  {lag of ARGV[1], entries trimmed}; {-1, 0} when the meta hash records another run (a --restart)
--! include entry_ids
if redis.call('HGET', KEYS[2], 'epoch') ~= ARGV[2] then return {-1, 0} end
local lag, ours, minid = false, nil, nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  if f['name'] == ARGV[1] then lag, ours = f['lag'], f['last-delivered-id'] end
  local ms, seq = split(f['last-delivered-id'])
  local keep = string.format('%d-%d', ms, seq + 1)  -- the group's next undelivered entry
  if f['pending'] > 0 then
    local oldest = redis.call('XPENDING', KEYS[1], f['name'])[2]
    if lt(oldest, keep) then keep = oldest end
  end
  if not minid or lt(keep, minid) then minid = keep end
end
if not ours then return {0, 0} end
if not lag then  -- the server could not tell (entries-read unknown): count the undelivered entries
  lag = #redis.call('XRANGE', KEYS[1], '(' .. ours, '+')
end
return {lag, redis.call('XTRIM', KEYS[1], 'MINID', minid)}
