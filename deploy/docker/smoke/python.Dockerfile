# Stand-in for the official Python image, for scripts/docker-smoke on machines that cannot pull
# images. It is tagged with the Dockerfile's own base image name (python:3.11.14-slim-bookworm) and
# laid out like it where the Dockerfile depends on that: python, python3, pip and pip3 on PATH in
# /usr/local/bin, packages under /usr/local/lib/python3.11/site-packages, CA certificates in
# /etc/ssl/certs, and groupadd/useradd available. The difference: Debian's CPython 3.11 (from the
# rootfs that debootstrap made) inside a virtual environment at /usr/local, instead of a CPython
# built from source. Production builds never use this file.
FROM tandem-smoke-rootfs:bookworm

ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8

RUN python3 -m venv /usr/local \
    && python --version \
    && pip --version

LABEL org.opencontainers.image.description="smoke-test stand-in for python:3.11.14-slim-bookworm (Debian bookworm rootfs + venv)" \
      io.tandem.smoke.stand-in="true"

CMD ["python3"]
