# imgw: built with the same scripts CI runs (.ci/deps, .ci/build), run as a non-root user.
#   docker build -t imgw .
#   docker run --rm -e IMGW_SECRET_KEY=... imgw --region=singapore --sdkappid=N --identifier=ADMIN

FROM debian:12 AS build
WORKDIR /src
COPY . .
# The build type CI builds and tests (and checks the runtime libraries of); stripped below.
RUN .ci/deps && CMAKE_ARGS=-DIMGW_BUILD_TESTS=OFF .ci/build \
 && strip build/bin/imgw-gateway build/bin/imgw-cli

FROM debian:12-slim AS runtime
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      ca-certificates libgrpc++1.51 libprotobuf32 libabsl20220623 libcurl4 \
      libboost-json1.81.0 libssl3 zlib1g libprometheus-cpp-core1.0 libhiredis0.14 libsqlite3-0 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 65532 --no-create-home --shell /usr/sbin/nologin imgw
COPY --from=build /src/build/bin/imgw-gateway /src/build/bin/imgw-cli /usr/local/bin/
# The working directory holds the queue's file (--queue_path=imgw-queue.db): mount a volume
# there (docker run -v imgw-queue:/var/lib/imgw) so that what was acknowledged outlives the
# container.
RUN mkdir -p /var/lib/imgw && chown 65532:65532 /var/lib/imgw
WORKDIR /var/lib/imgw
VOLUME /var/lib/imgw
USER 65532:65532
# gRPC, then /metrics and the probes.
EXPOSE 50051 9464
ENTRYPOINT ["/usr/local/bin/imgw-gateway", "--grpc_listen=0.0.0.0:50051", "--metrics_listen=0.0.0.0:9464"]
