-- file_append: append a chunk of a file source's packs, only where they continue the stream, so that no frame goes
-- on the stream twice whatever other producers of the source do.
-- KEYS[1]  frames stream          KEYS[2]  meta hash
-- ARGV[1]  the run's epoch        ARGV[2]  producer_seen (server ms)
-- ARGV[3]  this producer's token  ARGV[4]  the number of this call
-- ARGV[5…] per pack: its first seq, its last seq, its field count, its fields
-- Appends packs in order while each one begins at `produced`; stops at one that begins before it (some of its
-- frames are on the stream: another producer of the source sent them).
-- Returns  {packs added, produced - 1, status}: status 1; the server's error when it refused an XADD; 'gap' when a
--          pack begins after `produced` (nothing may be skipped); {0, -1, 0} when the meta hash no longer records
--          this run (a --restart since it began): nothing is added.
-- A call re-sent after a lost reply (redis-py retries) finds its number in the producer's field `append:<token>`
-- and returns what it did the first time, so the caller's counts stay right (a field per producer: another
-- producer's appends in between do not overwrite it).
local field = 'append:' .. ARGV[3]
local meta = redis.call('HMGET', KEYS[2], 'epoch', 'produced', field)
if meta[1] ~= ARGV[1] then return {0, -1, 0} end
if meta[3] then
  local call, done = string.match(meta[3], '^(%d+):(%d+)$')
  if call == ARGV[4] then return {tonumber(done), tonumber(meta[2]) - 1, 1} end
end
local nxt = tonumber(meta[2] or '0')
local added, i, status = 0, 5, 1
while i <= #ARGV do
  local first, n = tonumber(ARGV[i]), tonumber(ARGV[i + 2])
  if first < nxt then break end
  if first > nxt then status = 'gap' break end
  local reply = redis.pcall('XADD', KEYS[1], ARGV[1] .. '-' .. ARGV[i + 1], unpack(ARGV, i + 3, i + 2 + 2 * n))
  if type(reply) == 'table' and reply.err then status = reply.err break end
  nxt = tonumber(ARGV[i + 1]) + 1
  added, i = added + 1, i + 3 + 2 * n
end
redis.call('HSET', KEYS[2], 'produced', nxt, 'producer_seen', ARGV[2], field, ARGV[4] .. ':' .. added)
return {added, nxt - 1, status}
