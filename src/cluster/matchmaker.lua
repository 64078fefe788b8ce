-- tandem's global match queue (src/cluster/matchmaker.rs; docs/cluster.md, "Matchmaker in
-- Redis"). One script, one operation per call (ARGV[1]), each atomic.
--
-- KEYS[1] tandem:{mm}:queue   zset  sid -> enqueue number (oldest first)
-- KEYS[2] tandem:{mm}:seq     counter of enqueue numbers
-- and, in the same slot (the {mm} hash tag), keys named here from the guests and nodes:
--   tandem:{mm}:g:<sid>       hash  i = interests joined by "\n", n = node id,
--                                   t = enqueue time (the node's ms), a = "1" while away,
--                                   u = the guest's username (its partner's home names it)
--   tandem:{mm}:node:<node>   set   the node's queued guests (for drop_node)
--   tandem:{mm}:pair:<a>:<b>  string "cooldown" | "blocked", with the TTL (a < b)
--
-- Replies are arrays of strings: {"q"} queued / nothing paired, {"p", seeker, seeker's node,
-- seeker's name, partner, partner's node, partner's name, ...} pairs, {"e", code} refused, {"n"} not queued, {"k", numbers...}.

local Q = KEYS[1]
local SEQ = KEYS[2]
local P = 'tandem:{mm}:'
local op = ARGV[1]

local function gkey(sid) return P .. 'g:' .. sid end
local function nkey(node) return P .. 'node:' .. node end
local function pkey(a, b)
  if a < b then return P .. 'pair:' .. a .. ':' .. b end
  return P .. 'pair:' .. b .. ':' .. a
end

local function remove(sid, node)
  redis.call('ZREM', Q, sid)
  redis.call('DEL', gkey(sid))
  if node then redis.call('SREM', nkey(node), sid) end
end

-- The best partner for `sid` (interests `mine`, "\n"-joined) among the first `scan` queued
-- guests: the oldest present one sharing an interest, else the oldest present one; never
-- itself, never one it is blocked or cooling down with. Returns its sid, node and name, or nil.
local function find(sid, mine, scan)
  local tags = {}
  local has = false
  if mine and mine ~= '' then
    for tag in string.gmatch(mine, '[^\n]+') do
      tags[tag] = true
      has = true
    end
  end
  local first, firstnode, firstname
  for _, c in ipairs(redis.call('ZRANGE', Q, 0, scan - 1)) do
    if c ~= sid then
      local o = redis.call('HMGET', gkey(c), 'i', 'n', 'a', 'u')
      if not o[2] then
        -- A queue entry without its hash cannot be paired: drop it.
        redis.call('ZREM', Q, c)
      elseif o[3] ~= '1' and redis.call('EXISTS', pkey(sid, c)) == 0 then
        if not first then
          first, firstnode, firstname = c, o[2], o[4] or ''
          if not has then break end
        end
        if has and o[1] and o[1] ~= '' then
          for tag in string.gmatch(o[1], '[^\n]+') do
            if tags[tag] then return c, o[2], o[4] or '' end
          end
        end
      end
    end
  end
  return first, firstnode, firstname
end

-- Pairs the queued guest `sid` if it is present and has a partner: both leave the queue.
local function pair_queued(sid, scan, out)
  local me = redis.call('HMGET', gkey(sid), 'i', 'n', 'a', 'u')
  if not me[2] or me[3] == '1' then return end
  local p, pn, pu = find(sid, me[1], scan)
  if not p then return end
  remove(p, pn)
  remove(sid, me[2])
  out[#out + 1] = sid
  out[#out + 1] = me[2]
  out[#out + 1] = me[4] or ''
  out[#out + 1] = p
  out[#out + 1] = pn
  out[#out + 1] = pu
end

if op == 'enqueue' then
  -- ARGV: sid, interests, node, now ms, queue cap, scan, away ("1"/"0"), username
  local sid, interests, node, name = ARGV[2], ARGV[3], ARGV[4], ARGV[9]
  local scan = tonumber(ARGV[7])
  if redis.call('EXISTS', gkey(sid)) == 1 then return {'e', 'already_searching'} end
  if ARGV[8] ~= '1' then
    local p, pn, pu = find(sid, interests, scan)
    if p then
      remove(p, pn)
      return {'p', sid, node, name, p, pn, pu}
    end
  end
  if redis.call('ZCARD', Q) >= tonumber(ARGV[6]) then return {'e', 'queue_full'} end
  redis.call('ZADD', Q, redis.call('INCR', SEQ), sid)
  redis.call('HSET', gkey(sid), 'i', interests, 'n', node, 't', ARGV[5], 'a', ARGV[8], 'u', name)
  redis.call('SADD', nkey(node), sid)
  return {'q'}

elseif op == 'cancel' then
  -- ARGV: sid
  local node = redis.call('HGET', gkey(ARGV[2]), 'n')
  if not node then
    redis.call('ZREM', Q, ARGV[2])
    return {'n'}
  end
  remove(ARGV[2], node)
  return {'q'}

elseif op == 'away' then
  -- ARGV: sid, "1" away / "0" back, scan
  local sid = ARGV[2]
  if redis.call('EXISTS', gkey(sid)) == 0 then return {'n'} end
  redis.call('HSET', gkey(sid), 'a', ARGV[3])
  if ARGV[3] == '1' then return {'q'} end
  local out = {'p'}
  pair_queued(sid, tonumber(ARGV[4]), out)
  if #out == 1 then return {'q'} end
  return out

elseif op == 'end' then
  -- ARGV: a, b, "cooldown" | "blocked", ttl ms. A block is never shortened nor turned into a
  -- cooldown.
  local k = pkey(ARGV[2], ARGV[3])
  local ttl = tonumber(ARGV[5])
  local cur = redis.call('GET', k)
  if cur == 'blocked' and (ARGV[4] == 'cooldown' or redis.call('PTTL', k) >= ttl) then
    return {'q'}
  end
  redis.call('SET', k, ARGV[4], 'PX', ttl)
  return {'q'}

elseif op == 'cooldown_over' then
  -- ARGV: a, b, scan, slack ms. The cooldown's TTL runs on Redis's clock and the caller's
  -- timer on its own: a cooldown with at most `slack` left counts as over.
  local a, b = ARGV[2], ARGV[3]
  local k = pkey(a, b)
  local cur = redis.call('GET', k)
  if cur == 'blocked' then return {'q'} end
  if cur == 'cooldown' then
    if redis.call('PTTL', k) > tonumber(ARGV[5]) then return {'q'} end
    redis.call('DEL', k)
  end
  local out = {'p'}
  pair_queued(a, tonumber(ARGV[4]), out)
  pair_queued(b, tonumber(ARGV[4]), out)
  if #out == 1 then return {'q'} end
  return out

elseif op == 'drop_node' then
  -- ARGV: node, most entries this call. Replies {"k", removed, left}.
  local node = ARGV[2]
  local sids = redis.call('SPOP', nkey(node), tonumber(ARGV[3]))
  local removed = 0
  for _, sid in ipairs(sids) do
    if redis.call('HGET', gkey(sid), 'n') == node then
      redis.call('ZREM', Q, sid)
      redis.call('DEL', gkey(sid))
      removed = removed + 1
    end
  end
  return {'k', tostring(removed), tostring(redis.call('SCARD', nkey(node)))}

elseif op == 'len' then
  return {'k', tostring(redis.call('ZCARD', Q))}
end

return {'e', 'unknown_operation'}
