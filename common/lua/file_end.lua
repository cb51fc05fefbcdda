-- file_end: record a file source's end (eos, total) only if the run is still this one and the stream's last id is
-- the end-of-stream marker's, so that a --restart in between is never marked as ended.
-- KEYS[1]  frames stream   KEYS[2]  meta hash
-- ARGV[1]  the run's epoch ARGV[2]  the end-of-stream marker's seq
-- Returns  1 recorded; 0 another run; -1 the stream ends elsewhere
if redis.call('HGET', KEYS[2], 'epoch') ~= ARGV[1] then return 0 end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' and info[i + 1] ~= ARGV[1] .. '-' .. ARGV[2] then return -1 end
end
redis.call('HSET', KEYS[2], 'eos', 1, 'total', ARGV[2])
return 1
