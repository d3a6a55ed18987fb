"""Local real services: Kafka (KRaft), Cassandra 5.0 and MariaDB shard servers on loopback.

`lanner services up|down|status` and the test fixtures both go through `manager`. The Java
servers are resolved from Maven Central with the poms under ``deploy/maven``; their configuration
templates live under ``deploy/local``. MariaDB comes from Debian's ``mariadb-server``.
"""
