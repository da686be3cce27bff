"""walletctl over many PostgreSQL servers: a PL/Proxy proxy database in front of
partition databases, each an ordinary walletctl ledger (README "Beyond one machine").

- topology: is a connection a proxy, where are its partitions, which holds a user or a
  transaction; connections to partitions as the role that logged in to the proxy;
- proxy_sql: the proxy's SQL (walletctl/sql/proxy/proxy.sql) and the check that a proxy
  runs this walletctl's;
- dispatch: the one hook a core function uses to behave differently on a proxy;
- reads, procedures: the core's reads, and its whole-ledger procedures, over the
  partitions, combined;
- admin: `walletctl cluster create|move|status`.
"""
