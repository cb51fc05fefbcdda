-- publish_results: ack a batch's entries of one source and write their results, dead letters and counters,
-- atomically: a result exists if and only if its entry was acked by this call.
-- KEYS[1]  frames stream   KEYS[2]  results stream   KEYS[3]  dead letters   KEYS[4]  meta hash
-- ARGV[1]  the group
-- ARGV[2…] per entry: its id, then a JSON array of its items, one per frame (a pack has several):
--          [kind, [k1, v1, k2, v2, ...], frames]; kind is one of workers.writer.Kind: 'r' result,
--          'd' dead letter, 'e' end of stream, 's' stale (a live frame too old: counted, no result); frames
--          (default 1) is how many frames the item stands for (a pack that does not decode is one dead letter)
-- A live source's meta carries results_maxlen: its results stream is capped (~, whole nodes, cheaply).
-- Returns  the frames {results, dead, stale, eos} newly acked by this call
local cap = redis.call('HGET', KEYS[4], 'results_maxlen')
cap = cap and tonumber(cap)
local n = {0, 0, 0, 0}
for i = 2, #ARGV, 2 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    for _, item in ipairs(cjson.decode(ARGV[i + 1])) do
      local kind, frames = item[1], tonumber(item[3]) or 1
      if kind == 'd' then
        redis.call('XADD', KEYS[3], '*', unpack(item[2]))
        n[2] = n[2] + frames
      elseif kind == 's' then
        n[3] = n[3] + frames
      else
        if cap then
          redis.call('XADD', KEYS[2], 'MAXLEN', '~', cap, '*', unpack(item[2]))
        else
          redis.call('XADD', KEYS[2], '*', unpack(item[2]))
        end
        if kind == 'r' then n[1] = n[1] + frames else n[4] = n[4] + frames end
      end
    end
  end
end
if n[1] > 0 then redis.call('HINCRBY', KEYS[4], 'processed', n[1]) end
if n[2] > 0 then redis.call('HINCRBY', KEYS[4], 'dead', n[2]) end
if n[3] > 0 then redis.call('HINCRBY', KEYS[4], 'dropped_stale', n[3]) end
return n
