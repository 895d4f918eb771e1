FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends nodejs npm \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /srv/telemed
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY pyproject.toml README.md ./
COPY telemed telemed
COPY signaling signaling
RUN pip install --no-cache-dir -e .
RUN mkdir -p /var/lib/telemed && chown nobody /var/lib/telemed
USER nobody
EXPOSE 8080
CMD ["telemed", "serve"]
