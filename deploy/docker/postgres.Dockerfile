# PostgreSQL from Debian's packages, for the query and feedback log (`serve --feedback-db`).
# An official postgres image works as well; this one needs only apt, so it builds where no
# registry is reachable. The superuser password comes from POSTGRES_PASSWORD_FILE (a secret).
ARG BASE=debian:bookworm-slim
FROM ${BASE}
# no service may start during the build, and Debian's own cluster is not wanted (initdb runs at first start)
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
    && mkdir -p /etc/postgresql-common/createcluster.d \
    && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/isacir.conf \
    && apt-get update && apt-get install -y --no-install-recommends postgresql \
    && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d \
    && mkdir -p /var/lib/postgresql/data && chown postgres:postgres /var/lib/postgresql/data \
    && chmod 700 /var/lib/postgresql/data && ln -s /usr/lib/postgresql/*/bin /usr/lib/postgresql/bin
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
ENV PGDATA=/var/lib/postgresql/data POSTGRES_USER=isacir POSTGRES_DB=isacir
USER postgres
EXPOSE 5432
HEALTHCHECK --interval=5s --timeout=5s --retries=20 \
    CMD /usr/lib/postgresql/bin/pg_isready -h 127.0.0.1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -q
STOPSIGNAL SIGINT
ENTRYPOINT ["postgres-entrypoint"]
