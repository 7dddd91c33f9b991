# syntax=docker/dockerfile:1
# One image for the sidecar (`sidemesh proxy`) and the control plane (`sidemesh control`),
# with every plugin of plugins/ and the etcd client. docs/kubernetes.md says how to build,
# push and run it.
#
#   docker build -t registry.internal/sidemesh:0.4.0 .

# Build: wheels of the core, every plugin and all their dependencies; the core's as the
# platform wheel with the request path compiled by mypyc (the full image has the C
# compiler it needs). Everything else of this stage (pip's caches, the compiler, the
# build backend, the sources) stays behind.
FROM python:3.11 AS build
ENV HATCH_BUILD_HOOK_ENABLE_MYPYC=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE CHANGELOG.md ./
COPY schemas/ schemas/
COPY core/ core/
COPY plugins/ plugins/
RUN pip wheel --no-cache-dir --wheel-dir /wheels \
        ".[all,etcd]" ./plugins/retry ./plugins/circuit ./plugins/split ./plugins/mtls \
        ./plugins/tracing

# Run: the wheels installed from the build stage alone (no index), as uid 1337, Istio's
# proxy user, which traffic capture (sidemesh-init) lets out unredirected.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels /wheels/*.whl \
    && groupadd --system --gid 1337 sidemesh \
    && useradd --system --uid 1337 --gid 1337 --home-dir /var/lib/sidemesh --create-home \
        --shell /usr/sbin/nologin sidemesh
ENV SIDEMESH_STATE_DIR=/var/lib/sidemesh
WORKDIR /var/lib/sidemesh
USER 1337:1337
# 15001 outbound and 15006 inbound listeners (as `sidemesh import istio` writes them),
# 15010 the control API, 15021 the status port.
EXPOSE 15001 15006 15010 15021
ENTRYPOINT ["sidemesh"]
CMD ["--help"]
