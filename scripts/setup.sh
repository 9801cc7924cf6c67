#!/usr/bin/env bash
# Installs, idempotently, what a fresh machine lacks: redis-server and openssl (apt),
# chromium (apt: the dashboard page's browser check renders the page headless), a
# project-local Python venv with moto[server], the SAM CLI (with cfn-lint) and cargo-lambda
# (with zig), checkov in its own venv, the arm64 Rust target, and cfn-guard (cargo install).
source "$(dirname "$0")/lib.sh"

if ! command -v redis-server >/dev/null || ! command -v openssl >/dev/null; then
  step "apt: redis-server openssl"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server redis-tools openssl >/dev/null
  # The Debian package may start a system instance on 6379; tests use their own ports.
fi

if ! command -v chromium >/dev/null; then
  step "apt: chromium (headless, for the dashboard page's browser check)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

stamp="$VENV/.tidemark-installed-v1"
if [ ! -f "$stamp" ]; then
  step "python venv: moto[server], aws-sam-cli, cargo-lambda"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q 'moto[server]>=5.1,<6' 'aws-sam-cli>=1.130' 'cargo-lambda>=1.8'
  touch "$stamp"
fi

stamp="$CHECKOV_VENV/.tidemark-installed-v1"
if [ ! -f "$stamp" ]; then
  step "python venv: checkov"
  python3 -m venv "$CHECKOV_VENV"
  "$CHECKOV_VENV/bin/pip" install -q --upgrade pip
  "$CHECKOV_VENV/bin/pip" install -q 'checkov>=3.2'
  touch "$stamp"
fi

if ! rustup target list --installed | grep -q aarch64-unknown-linux-gnu; then
  step "rustup: aarch64-unknown-linux-gnu"
  rustup target add aarch64-unknown-linux-gnu
fi

if ! command -v cfn-guard >/dev/null; then
  step "cargo install cfn-guard (CloudFormation Guard, ~2 min)"
  cargo install cfn-guard --locked --version 3.2.1
fi

for tool in moto_server sam cfn-lint cargo-lambda checkov redis-server cfn-guard chromium; do
  command -v "$tool" >/dev/null || die "setup: $tool is still missing"
done
step "setup complete"
