# Stand-in for the official Prometheus image, for scripts/docker-smoke on machines that cannot pull
# images. It is tagged with docker-compose.yml's Prometheus image name and keeps the official
# image's layout: the binary at /bin/prometheus as ENTRYPOINT, the configuration at
# /etc/prometheus/prometheus.yml, the data in /prometheus (the working directory and a volume),
# owned by and running as nobody (65534). The difference: Debian bookworm's prometheus package,
# an older 2.x release, instead of the upstream build. Production never uses this file.
FROM tandem-smoke-rootfs:bookworm

# policy-rc.d keeps the package's maintainer scripts from starting a service during the build.
# The stand-in takes whichever prometheus bookworm carries, so the version is not pinned.
# hadolint ignore=DL3008
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d \
    && chmod 0755 /usr/sbin/policy-rc.d \
    && apt-get update \
    && apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d \
    && mkdir -p /prometheus \
    && chown -R nobody:nogroup /etc/prometheus /prometheus \
    && chmod g+w /prometheus \
    && /bin/prometheus --version

LABEL org.opencontainers.image.description="smoke-test stand-in for prom/prometheus (Debian bookworm's prometheus package)" \
      io.tandem.smoke.stand-in="true"

WORKDIR /prometheus
# nobody:nogroup, numeric as docker-compose.yml gives it.
USER 65534:65534
EXPOSE 9090
VOLUME ["/prometheus"]
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
