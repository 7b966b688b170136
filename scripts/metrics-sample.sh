#!/usr/bin/env bash
# Prints the mcp_authkit_ lines of a real /metrics text after one fail-fast
# sign-in and one call with the stored token (providers/examples/metrics_sample.rs).
# The README's "Scraping" sample is this output.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run -q -p mcp-authkit-providers --all-features --example metrics_sample | grep '^mcp_authkit_'
