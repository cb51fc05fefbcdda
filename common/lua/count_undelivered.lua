-- count_undelivered: entries after a consumer group's last-delivered id, for when XINFO GROUPS reports lag as
-- nil (it does after deletions inside the undelivered range, which is how live sources trim).
-- KEYS[1]  frames stream
-- ARGV[1]  the group's last-delivered id
-- ARGV[2]  count at most this many
-- Returns  the number of entries after ARGV[1], capped at ARGV[2]
return #redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
