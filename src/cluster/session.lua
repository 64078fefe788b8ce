-- A guest session's shared record (src/cluster/mod.rs; docs/cluster.md, "Session records").
-- KEYS[1] tandem:s:<sid>, a hash: c = "1" once a socket of the guest connected on any node
-- ("0" before), h = "<home node>:<room>" while the guest is in a chat, p and n = the
-- partner's id and name in that chat (to take the room over if its home dies), k = its call
-- there (ringing or accepted). It expires with the
-- guest's token (PEXPIREAT, the token's expiry in Unix ms): a refresh on any node moves it.
--
-- Replies: {"n"} no such session; {"k", home or "", ms left, partner or "", partner's name
-- or "", call or ""} the record.

local K = KEYS[1]
local op = ARGV[1]

local function record()
  local r = redis.call('HMGET', K, 'h', 'p', 'n', 'k')
  return {'k', r[1] or '', tostring(redis.call('PTTL', K)), r[2] or '', r[3] or '', r[4] or ''}
end

if op == 'new' then
  -- ARGV: expiry (Unix ms)
  redis.call('HSET', K, 'c', '0')
  redis.call('PEXPIREAT', K, ARGV[2])
  return record()
end

if op == 'restore' then
  -- Redis lost its data and a node writes what it holds again, merged with what other nodes
  -- write. ARGV: expiry (Unix ms; the later one stays), connected ("1" sticks), home
  -- ("<node>:<room>", or "-": not known to this node), partner id, partner name, call ("-":
  -- not known, "": none).
  if ARGV[3] == '1' or redis.call('HGET', K, 'c') ~= '1' then
    redis.call('HSET', K, 'c', ARGV[3])
  end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local left = redis.call('PTTL', K)
  if left < 0 or now + left < tonumber(ARGV[2]) then
    redis.call('PEXPIREAT', K, ARGV[2])
  end
  if ARGV[4] ~= '-' then
    redis.call('HSET', K, 'h', ARGV[4], 'p', ARGV[5], 'n', ARGV[6])
  end
  if ARGV[7] == '' then
    redis.call('HDEL', K, 'k')
  elseif ARGV[7] ~= '-' then
    redis.call('HSET', K, 'k', ARGV[7])
  end
  return record()
end

if redis.call('EXISTS', K) == 0 then return {'n'} end

if op == 'attach' then
  redis.call('HSET', K, 'c', '1')
  return record()
elseif op == 'peek' then
  return record()
elseif op == 'extend' then
  -- ARGV: expiry (Unix ms)
  redis.call('PEXPIREAT', K, ARGV[2])
  return record()
elseif op == 'home' then
  -- ARGV: "<node>:<room>" (or "" for none), partner id, partner name
  if ARGV[2] == '' then
    redis.call('HDEL', K, 'h', 'p', 'n', 'k')
  else
    redis.call('HSET', K, 'h', ARGV[2], 'p', ARGV[3], 'n', ARGV[4])
  end
  return record()
elseif op == 'call' then
  -- ARGV: call id, or "" for none
  if ARGV[2] == '' then redis.call('HDEL', K, 'k') else redis.call('HSET', K, 'k', ARGV[2]) end
  return record()
elseif op == 'reap' then
  if redis.call('HGET', K, 'c') ~= '1' then
    redis.call('DEL', K)
    return {'n'}
  end
  return record()
end
return {'e', 'unknown_operation'}
