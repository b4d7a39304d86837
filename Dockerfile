# An orbit_mq endpoint in a container (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY . /src
RUN pip install . \
 && useradd --create-home --uid 10001 orbit

USER orbit
WORKDIR /home/orbit
CMD ["orbit-mq", "endpoint", "start", "--name", "ep1", "--plugins", "sysinfo,psij,staging"]
