-- entry_ids (helper, included by scripts that compare stream entry ids "ms-seq"):
-- split(id) -> ms, seq; lt(a, b): a before b; le(a, b): a not after b.
local function split(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
local function lt(a, b)
  local am, as = split(a)
  local bm, bs = split(b)
  return am < bm or (am == bm and as < bs)
end
local function le(a, b)
  return not lt(b, a)
end
