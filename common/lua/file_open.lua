-- file_open: open a file source for a run, in one step, so that nothing falls between a --restart, the checks and
-- the record of the run (two producers agree on one run; two files never mix on one stream).
-- KEYS[1]  frames stream   KEYS[2]  meta hash   KEYS[3…] the source's other keys (a restart deletes them all)
-- ARGV[1]  the epoch proposed for a new stream   ARGV[2]  '1' to start over (--restart)
-- ARGV[3]  the group       ARGV[4]  the file's path   ARGV[5]  n, the count of identity fields
-- ARGV[6…] n identity fields and values, then the meta fields this producer sets (producer, started_at, ...)
-- The run is the recorded one, provided the stream's ids carry its epoch (or it has no entries yet); with no run
-- recorded and no entries, a new one with the proposed epoch, above a deleted stream's. `produced` is at least
-- the stream's last seq + 1.
-- Returns  {1, epoch, next seq}, or {0, kind, detail} for a refusal: 'live' (a camera's source), 'path' (another
--          file), 'identity' (other settings), 'foreign' (not a file producer's stream)
--! include entry_ids
--! include ensure_group
local function last_id()
  if redis.call('EXISTS', KEYS[1]) == 0 then return 0, -1, '0-0' end
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      local ms, seq = split(info[i + 1])
      return ms, seq, info[i + 1]
    end
  end
end
if redis.call('HGET', KEYS[2], 'mode') == 'live' then return {0, 'live', ''} end
local proposed = tonumber(ARGV[1])
if ARGV[2] == '1' then
  local gone = last_id()
  if gone >= proposed then proposed = gone + 1 end
  redis.call('DEL', unpack(KEYS))
end
local path = redis.call('HGET', KEYS[2], 'path')
if path and path ~= ARGV[4] then return {0, 'path', path} end
local n = tonumber(ARGV[5])
local changed = {}
for i = 6, 5 + 2 * n, 2 do
  local stored = redis.call('HGET', KEYS[2], ARGV[i])
  if stored and stored ~= ARGV[i + 1] then
    changed[#changed + 1] = ARGV[i] .. " was '" .. stored .. "', now '" .. ARGV[i + 1] .. "'"
  end
end
if #changed > 0 then return {0, 'identity', table.concat(changed, '; ')} end
ensure_group(KEYS[1], ARGV[3])
local ms, seq, last = last_id()
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  if ms == 0 then
    epoch = string.format('%d', proposed)
  else
    return {0, 'foreign', 'its entries have no run recorded'}
  end
elseif ms ~= 0 and ms ~= tonumber(epoch) then
  return {0, 'foreign', 'its ids start ' .. last .. ', its meta hash records the run ' .. epoch}
end
local produced = tonumber(redis.call('HGET', KEYS[2], 'produced') or '0')
if ms ~= 0 and seq + 1 > produced then produced = seq + 1 end
redis.call('HSET', KEYS[2], 'epoch', epoch, 'produced', produced, 'path', ARGV[4],
           unpack(ARGV, 6, #ARGV))
return {1, epoch, produced}
