-- Celeriac's broker on Redis: every operation of the broker contract, each one atomic.
--
-- Called as   EVALSHA <sha> 0 <op> <prefix> <now> <args...>
-- where <now> is the caller's clock (unix seconds) and <prefix> (P below) names the key
-- space. The keys are built here from the prefix, so this needs one Redis server (or a
-- replicated primary), not Redis Cluster.
--
-- Key layout:
--   P:seq            counter: publish order
--   P:queues         set of the queue names seen
--   P:q:<queue>      zset of ready messages: score = (9 - priority) * 2^43 + eta in ms,
--                    member = seq (16 digits) .. ':' .. id, so that ties of score go in
--                    publish order: highest priority first, then oldest eta, then FIFO
--   P:delayed        zset of delayed messages of every queue, score = eta
--   P:leased         zset of leased messages of every queue, score = lease deadline
--   P:m:<id>         hash per message not yet acked: body, queue, priority, eta, seq,
--                    attempt (fencing token), expiries
--   P:wake:<queue>   list of at most one token, pushed by publish; idle workers BLPOP it
--   P:dseq           counter: dead-letter numbers
--   P:d:<n>          hash per dead letter: id, queue, body, reason, dead_at
--   P:dead           list of dead-letter numbers, newest first, of every queue
--   P:dead:<queue>   the same, for one queue
--   P:deadcount      hash: queue -> number of dead letters
--   P:revoked        zset of revoked ids, score = until when it is remembered
--   P:terminate      zset of the revoked ids whose running task is to be stopped, same scores
--   P:rate:<key>     the next free slot (unix time) of a rate limit; expires when unused
--   P:key:<key>      '<until> <id>': the message that took an idempotency key, and until when
--   P:beat:lease     hash: owner, until, token (the beat leader lease and its fencing token)
--   P:beat:ticks     hash: entry -> the last tick sent
--   P:beat:entries   hash: entry name -> JSON, the entries added at run time
--
-- A message is in exactly one of P:q:<queue>, P:delayed, P:leased, or dead (P:d:<n>),
-- and its P:m:<id> hash exists exactly while it is in one of the first three.

local op, P, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local PRIORITY_STEP = 8796093022208 -- 2^43 ms: eta up to the year 2248 fits below it
local SEQ_DIGITS = 16

local function make_ready(id, queue, priority, eta, seq)
  local score = (9 - tonumber(priority)) * PRIORITY_STEP + math.floor(tonumber(eta) * 1000)
  redis.call('ZADD', P .. ':q:' .. queue, score, string.format('%016d', tonumber(seq)) .. ':' .. id)
end

-- Put a message (its hash already written) in its queue's ready set. A message whose hash
-- is gone (deleted by hand, or evicted by a maxmemory-policy other than noeviction) is
-- dropped here and everywhere else: there is nothing left to run.
local function requeue(id)
  local m = redis.call('HMGET', P .. ':m:' .. id, 'queue', 'priority', 'eta', 'seq')
  if m[1] then make_ready(id, m[1], m[2], m[3], m[4]) end
end

local function id_of(member)
  return string.sub(member, SEQ_DIGITS + 2)
end

local function bury(id, reason)
  local mkey = P .. ':m:' .. id
  local m = redis.call('HMGET', mkey, 'queue', 'body')
  local n = redis.call('INCR', P .. ':dseq')
  redis.call('HSET', P .. ':d:' .. n, 'id', id, 'queue', m[1], 'body', m[2],
    'reason', reason, 'dead_at', ARGV[3])
  redis.call('LPUSH', P .. ':dead', n)
  redis.call('LPUSH', P .. ':dead:' .. m[1], n)
  redis.call('HINCRBY', P .. ':deadcount', m[1], 1)
  redis.call('DEL', mkey)
end

local function is_revoked(id)
  local expiry = redis.call('ZSCORE', P .. ':revoked', id)
  return expiry and tonumber(expiry) > now
end

-- Is this delivery (id, attempt) still the current lease on the message?
local function owned(id, attempt)
  return redis.call('ZSCORE', P .. ':leased', id)
    and redis.call('HGET', P .. ':m:' .. id, 'attempt') == attempt
end

-- Take an idempotency key for message `id` unless another message holds it; if one does,
-- append (id, holder) to `taken` and return false. The value is '<until> <id>': <until>
-- on the callers' clock, as for leases.
local function take_key(id, key, ttl_ms_text, taken)
  local kkey, ttl_ms = P .. ':key:' .. key, tonumber(ttl_ms_text)
  local held = redis.call('GET', kkey)
  local space = held and string.find(held, ' ', 1, true)
  if space and tonumber(string.sub(held, 1, space - 1)) > now then
    table.insert(taken, id)
    table.insert(taken, string.sub(held, space + 1))
    return false
  end
  local until_text = string.format('%.6f', now + ttl_ms / 1000)
  redis.call('SET', kkey, until_text .. ' ' .. id, 'PX', ttl_ms + 1000)
  return true
end

-- take_keys <n> (<id> <key> <key ttl ms>) * n: the keys alone, for a broker whose messages
-- live elsewhere (amqp://). Returns (id, holder)* as publish does.
if op == 'take_keys' then
  local taken = {}
  for i = 0, tonumber(ARGV[4]) - 1 do
    take_key(ARGV[5 + i * 3], ARGV[6 + i * 3], ARGV[7 + i * 3], taken)
  end
  return taken
end

-- publish <n> (<id> <queue> <priority> <eta or ''> <body> <key or ''> <key ttl ms>) * n
-- Returns (id, holder)* for the messages not stored because their key was taken.
if op == 'publish' then
  local n, woken, seen, taken = tonumber(ARGV[4]), {}, {}, {}
  local any_revoked = redis.call('EXISTS', P .. ':revoked') == 1
  for i = 0, n - 1 do
    local base = 5 + i * 7
    local id, queue, priority, eta, body =
      ARGV[base], ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4]
    local mkey = P .. ':m:' .. id
    local free = ARGV[base + 5] == '' or take_key(id, ARGV[base + 5], ARGV[base + 6], taken)
    if free and redis.call('EXISTS', mkey) == 0 and not (any_revoked and is_revoked(id)) then
      local due = eta == '' and now or tonumber(eta)
      local seq = redis.call('INCR', P .. ':seq')
      redis.call('HSET', mkey, 'body', body, 'queue', queue, 'priority', priority,
        'eta', due, 'seq', seq, 'attempt', 0, 'expiries', 0)
      if not seen[queue] then
        redis.call('SADD', P .. ':queues', queue)
        seen[queue] = true
      end
      if due > now then
        redis.call('ZADD', P .. ':delayed', due, id)
      else
        make_ready(id, queue, priority, due, seq)
        woken[queue] = true
      end
    end
  end
  for queue in pairs(woken) do
    redis.call('LPUSH', P .. ':wake:' .. queue, 1)
    redis.call('LTRIM', P .. ':wake:' .. queue, 0, 0)
  end
  return taken
end

-- fetch <lease deadline> <limit> <max expiries> <queue>...
-- Promotes due delayed messages, takes back expired leases, then leases the best
-- <limit> ready messages of the queues. Returns (id, queue, body, attempt, expiries)*.
if op == 'fetch' then
  local deadline, limit, max_expiries = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. ':delayed', '-inf', now,
      'LIMIT', 0, 1000)) do
    redis.call('ZREM', P .. ':delayed', id)
    requeue(id)
  end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. ':leased', '-inf', now,
      'LIMIT', 0, 1000)) do
    redis.call('ZREM', P .. ':leased', id)
    if redis.call('EXISTS', P .. ':m:' .. id) == 0 then
      -- gone: see requeue
    elseif redis.call('HINCRBY', P .. ':m:' .. id, 'expiries', 1) >= max_expiries then
      local expiries = redis.call('HGET', P .. ':m:' .. id, 'expiries')
      bury(id, 'lease expired ' .. expiries .. ' times: its worker died or hung')
    else
      requeue(id)
    end
  end
  local candidates = {}
  for i = 7, #ARGV do
    local found = redis.call('ZRANGE', P .. ':q:' .. ARGV[i], 0, limit - 1, 'WITHSCORES')
    for j = 1, #found, 2 do
      table.insert(candidates, { found[j], tonumber(found[j + 1]), ARGV[i] })
    end
  end
  if #ARGV > 7 then
    table.sort(candidates, function(a, b)
      return a[2] < b[2] or (a[2] == b[2] and a[1] < b[1])
    end)
  end
  local out = {}
  for k = 1, math.min(limit, #candidates) do
    local member, queue = candidates[k][1], candidates[k][3]
    local id = id_of(member)
    local mkey = P .. ':m:' .. id
    redis.call('ZREM', P .. ':q:' .. queue, member)
    local m = redis.call('HMGET', mkey, 'body', 'expiries')
    if m[1] then -- else gone: see requeue
      redis.call('ZADD', P .. ':leased', deadline, id)
      table.insert(out, id)
      table.insert(out, queue)
      table.insert(out, m[1])
      table.insert(out, redis.call('HINCRBY', mkey, 'attempt', 1))
      table.insert(out, tonumber(m[2]))
    end
  end
  return out
end

-- renew <lease deadline> (<id> <attempt>)*  /  ack (<id> <attempt>)*
-- release (<id> <attempt>)*: each returns one 1 (owned, done) or 0 per delivery.
if op == 'renew' or op == 'ack' or op == 'release' then
  local first = op == 'renew' and 5 or 4
  local out = {}
  for i = first, #ARGV, 2 do
    local id, attempt = ARGV[i], ARGV[i + 1]
    if owned(id, attempt) then
      if op == 'renew' then
        redis.call('ZADD', P .. ':leased', ARGV[4], id)
      else
        redis.call('ZREM', P .. ':leased', id)
        if op == 'ack' then redis.call('DEL', P .. ':m:' .. id) else requeue(id) end
      end
      table.insert(out, 1)
    else
      table.insert(out, 0)
    end
  end
  return out
end

-- nack <id> <attempt> <eta> <has body: 1|0> <body>
if op == 'nack' then
  local id, attempt, eta = ARGV[4], ARGV[5], tonumber(ARGV[6])
  if not owned(id, attempt) then return 0 end
  redis.call('ZREM', P .. ':leased', id)
  -- Like a new publish: behind the messages already waiting.
  redis.call('HSET', P .. ':m:' .. id, 'eta', eta, 'seq', redis.call('INCR', P .. ':seq'))
  if ARGV[7] == '1' then redis.call('HSET', P .. ':m:' .. id, 'body', ARGV[8]) end
  if eta > now then
    redis.call('ZADD', P .. ':delayed', eta, id)
  else
    requeue(id)
  end
  return 1
end

-- dead_letter <id> <attempt> <reason>
if op == 'dead_letter' then
  if not owned(ARGV[4], ARGV[5]) then return 0 end
  redis.call('ZREM', P .. ':leased', ARGV[4])
  bury(ARGV[4], ARGV[6])
  return 1
end

-- revoke <until> <terminate: 1|0> <id>*: remember the ids until <until>; delete their
-- ready or delayed messages. Returns the ids deleted.
if op == 'revoke' then
  local keep_until, terminate, out = tonumber(ARGV[4]), ARGV[5] == '1', {}
  redis.call('ZREMRANGEBYSCORE', P .. ':revoked', '-inf', now)
  redis.call('ZREMRANGEBYSCORE', P .. ':terminate', '-inf', now)
  for i = 6, #ARGV do
    local id = ARGV[i]
    local mkey = P .. ':m:' .. id
    redis.call('ZADD', P .. ':revoked', keep_until, id)
    if terminate then redis.call('ZADD', P .. ':terminate', keep_until, id) end
    local m = redis.call('HMGET', mkey, 'queue', 'seq')
    if m[1] and not redis.call('ZSCORE', P .. ':leased', id) then
      redis.call('ZREM', P .. ':delayed', id)
      redis.call('ZREM', P .. ':q:' .. m[1], string.format('%016d', tonumber(m[2])) .. ':' .. id)
      redis.call('DEL', mkey)
      table.insert(out, id)
    end
  end
  return out
end

-- revoked <id>*: (id, terminate 1|0)* for the ids that are revoked.
if op == 'revoked' then
  local out = {}
  for i = 4, #ARGV do
    if is_revoked(ARGV[i]) then
      table.insert(out, ARGV[i])
      table.insert(out, redis.call('ZSCORE', P .. ':terminate', ARGV[i]) and 1 or 0)
    end
  end
  return out
end

-- throttle <key> <interval>: reserve the next free slot of a rate limit; returns its time
-- (as a string: Lua numbers become integers in a reply).
if op == 'throttle' then
  local key, interval = P .. ':rate:' .. ARGV[4], tonumber(ARGV[5])
  local slot = math.max(tonumber(redis.call('GET', key) or '0'), now)
  local ttl = math.ceil((slot + interval - now) * 1000) + 1000
  redis.call('SET', key, string.format('%.6f', slot + interval), 'PX', ttl)
  return string.format('%.6f', slot)
end

-- beat_lead <owner> <ttl>: the fencing token while <owner> holds the lease, else nil.
if op == 'beat_lead' then
  local key, owner = P .. ':beat:lease', ARGV[4]
  local held = redis.call('HMGET', key, 'owner', 'until', 'token')
  if held[1] and held[1] ~= owner and tonumber(held[2]) > now then return false end
  local token = 1
  if held[1] then
    token = tonumber(held[3]) + (held[1] ~= owner and 1 or 0)
  end
  redis.call('HSET', key, 'owner', owner, 'until', tostring(now + tonumber(ARGV[5])),
    'token', token)
  return token
end

-- beat_record <token> (<entry> <tick>)*: 1 if saved (the token is the lease's), else 0.
if op == 'beat_record' then
  if redis.call('HGET', P .. ':beat:lease', 'token') ~= ARGV[4] then return 0 end
  for i = 5, #ARGV, 2 do
    local last = tonumber(redis.call('HGET', P .. ':beat:ticks', ARGV[i]) or '-1')
    if tonumber(ARGV[i + 1]) > last then
      redis.call('HSET', P .. ':beat:ticks', ARGV[i], ARGV[i + 1])
    end
  end
  return 1
end

-- purge <queue>: the queue's ready and delayed messages; returns how many.
if op == 'purge' then
  local queue, count = ARGV[4], 0
  local qkey = P .. ':q:' .. queue
  for _, member in ipairs(redis.call('ZRANGE', qkey, 0, -1)) do
    redis.call('DEL', P .. ':m:' .. id_of(member))
    count = count + 1
  end
  redis.call('DEL', qkey)
  for _, id in ipairs(redis.call('ZRANGE', P .. ':delayed', 0, -1)) do
    if redis.call('HGET', P .. ':m:' .. id, 'queue') == queue then
      redis.call('ZREM', P .. ':delayed', id)
      redis.call('DEL', P .. ':m:' .. id)
      count = count + 1
    end
  end
  return count
end

-- replay <queue or ''> <id>*: dead letters back to their queues (all if no ids), as new
-- messages at priority 0 due now, unless their id is queued again. Returns how many.
-- purge_dead <queue or ''>: delete dead letters. Returns how many.
if op == 'replay' or op == 'purge_dead' then
  local queue, wanted = ARGV[4], nil
  if #ARGV > 4 then
    wanted = {}
    for i = 5, #ARGV do wanted[ARGV[i]] = true end
  end
  local list = queue == '' and P .. ':dead' or P .. ':dead:' .. queue
  local count = 0
  for _, n in ipairs(redis.call('LRANGE', list, 0, -1)) do
    local d = redis.call('HMGET', P .. ':d:' .. n, 'id', 'queue', 'body')
    if d[1] and (wanted == nil or wanted[d[1]]) then
      local mkey = P .. ':m:' .. d[1]
      local take = op == 'purge_dead' or redis.call('EXISTS', mkey) == 0
      if take then
        if op == 'replay' then
          local seq = redis.call('INCR', P .. ':seq')
          redis.call('HSET', mkey, 'body', d[3], 'queue', d[2], 'priority', 0, 'eta', now,
            'seq', seq, 'attempt', 0, 'expiries', 0)
          make_ready(d[1], d[2], 0, now, seq)
        end
        redis.call('DEL', P .. ':d:' .. n)
        redis.call('LREM', P .. ':dead', 1, n)
        redis.call('LREM', P .. ':dead:' .. d[2], 1, n)
        redis.call('HINCRBY', P .. ':deadcount', d[2], -1)
        count = count + 1
      end
    end
  end
  return count
end

-- stats: (queue ready delayed leased dead)* for every queue seen. A due delayed message
-- or an expired lease counts as ready: it will be handed out at the next fetch.
if op == 'stats' then
  local counts = {}
  local function bump(queue, field)
    counts[queue] = counts[queue] or { ready = 0, delayed = 0, leased = 0 }
    counts[queue][field] = counts[queue][field] + 1
  end
  for _, queue in ipairs(redis.call('SMEMBERS', P .. ':queues')) do
    counts[queue] = { ready = redis.call('ZCARD', P .. ':q:' .. queue), delayed = 0, leased = 0 }
  end
  for _, key in ipairs({ 'delayed', 'leased' }) do
    local members = redis.call('ZRANGE', P .. ':' .. key, 0, -1, 'WITHSCORES')
    for j = 1, #members, 2 do
      local queue = redis.call('HGET', P .. ':m:' .. members[j], 'queue')
      if queue then bump(queue, tonumber(members[j + 1]) > now and key or 'ready') end
    end
  end
  local out = {}
  for queue, c in pairs(counts) do
    local dead = tonumber(redis.call('HGET', P .. ':deadcount', queue) or '0')
    table.insert(out, queue)
    table.insert(out, c.ready)
    table.insert(out, c.delayed)
    table.insert(out, c.leased)
    table.insert(out, dead)
  end
  return out
end

return redis.error_reply('celeriac: unknown broker operation ' .. tostring(op))
