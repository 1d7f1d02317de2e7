"""Operations tests: the deployment files (compose, Dockerfile, Redis config and ACL), Sentinel
failover, metrics, logs, import/delete and RQ's own tooling, against real processes."""
