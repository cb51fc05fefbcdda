-- ensure_group (helper, included by scripts that open a source): ensure_group(stream, group) creates the
-- consumer group from the stream's first entry (MKSTREAM), unless it exists; any other error is raised as the
-- script's error.
local function ensure_group(stream, group)
  local made = redis.pcall('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
  if type(made) == 'table' and made.err and not string.find(made.err, 'BUSYGROUP', 1, true) then error(made) end
end
