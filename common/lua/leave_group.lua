-- leave_group: delete a consumer from the group unless it owns a pending entry (XGROUP DELCONSUMER would drop
-- them); check and delete in one step.
-- KEYS[1]  frames stream
-- ARGV[1]  the group   ARGV[2]  the consumer
-- Returns  1 deleted; 0 kept (it owns pending entries)
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
