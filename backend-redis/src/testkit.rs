pub struct RedisServer;
