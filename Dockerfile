# dogstatsd-relay: a DogStatsD-compatible relay. Configured by DD_* environment variables, like the Datadog Agent.
#
#   docker build -t dogstatsd-relay .
#   docker run --rm --read-only -p 8125:8125/udp -p 8127:8127 -e DD_API_KEY=... dogstatsd-relay
#
# The base image names its Debian release (bookworm), so the apt pins below are that release's versions. To bump
# Python or Debian: change both FROM lines, then set each pin to the version `apt-cache policy gcc libc6-dev`
# shows on the new release (tests/test_container.py checks that the pins resolve on the release the tag names).

# Build stage: a wheel of the relay, with its optional C extensions compiled (the hot paths, the sockets' reader
# thread); the final image has no compiler.
FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc=4:12.* libc6-dev=2.36-* \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY relay ./relay
COPY collectors ./collectors
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[intake,postgres]"

FROM python:3.11-slim-bookworm
# The same install as the README's: pip installs the project (here from the wheel built above).
COPY --from=build /wheels /wheels
# --no-index: only the wheels built above can be installed, so every version is already fixed by the build stage.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --no-index --find-links /wheels "dogstatsd-relay[intake,postgres]" \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/dogstatsd-relay --create-home relay \
    && mkdir -p /var/run/datadog \
    && chown relay:relay /var/run/datadog
USER 10001:10001
WORKDIR /var/lib/dogstatsd-relay
# In a container, loopback is not reachable from other containers: listen on every interface, as the Agent's
# DogStatsD image does. Set DD_DOGSTATSD_NON_LOCAL_TRAFFIC=false for a sidecar that shares the pod's loopback.
# The health endpoint too, for probes and scrapes from outside: /healthz, /ready and /metrics answer anyone, while
# /status and /debug/* (the traffic itself) answer loopback (`docker exec ... dogstatsd-relay status`) or a request
# with `Authorization: Bearer` and the token the relay writes to $DD_RUN_PATH/auth_token.
# DD_RUN_PATH: the only place the relay writes (its disk spool, reload state and token), a volume, so that the image
# runs with a read-only root filesystem; /var/run/datadog holds the Unix sockets apps write to.
ENV DD_DOGSTATSD_NON_LOCAL_TRAFFIC=true \
    DD_RELAY_HEALTH_HOST=0.0.0.0 \
    DD_RUN_PATH=/var/lib/dogstatsd-relay \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/dogstatsd-relay", "/var/run/datadog"]
EXPOSE 8125/udp 8127
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["dogstatsd-relay", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["dogstatsd-relay"]
CMD ["run"]
