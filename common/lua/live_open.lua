-- live_open: register a source as a camera's, in one step like file_open, so that a source is never both a
-- camera's and a file's.
-- KEYS[1]  frames stream   KEYS[2]  meta hash
-- ARGV[1]  the group       ARGV[2…] the meta fields to set (field, value, ...)
-- Returns  the previous camera state ('' if none), or nil for a file source
--! include ensure_group
if redis.call('HEXISTS', KEYS[2], 'path') == 1 then return nil end
ensure_group(KEYS[1], ARGV[1])
local state = redis.call('HGET', KEYS[2], 'state') or ''
redis.call('HSET', KEYS[2], unpack(ARGV, 2, #ARGV))
return state
