-- presence_members: reaps, then returns the USER JSON of every present user.
reap(now_ms())
return redis.call('HVALS', KEYS[2])
