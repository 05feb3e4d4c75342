#!/usr/bin/env bash
# Fails if the generated HTML docs contain intra-doc links that rustdoc
# printed as plain text (`[<code>Name</code>]`). rustdoc does that without
# any warning when a link resolves to an item of a crate whose docs location
# it does not know; `-D warnings` cannot catch it. Run after `cargo doc`.
set -euo pipefail
cd "$(dirname "$0")/.."
doc_dir="${1:-target/doc}"
if [ ! -d "$doc_dir" ]; then
  echo "no docs in $doc_dir; run cargo doc first" >&2
  exit 2
fi
# Only the workspace crates' own docs: trait implementations repeat the
# docs of traits (tracing's `Subscriber`, `Instrument`, …), whose links to
# their own crates cannot resolve under `--no-deps`; our own traits are
# checked on their own pages.
found=""
for crate in distlock distlock_memory distlock_redis distlock_conformance distlock_examples; do
  [ -d "$doc_dir/$crate" ] || continue
  while IFS= read -r -d '' page; do
    hits=$(sed '/id="trait-implementations"/,$d' "$page" \
      | grep -Eo '\[<code>[^<]{1,80}</code>\]' || true)
    [ -z "$hits" ] || found+="$page: $hits"$'\n'
  done < <(find "$doc_dir/$crate" -name '*.html' -print0)
done
if [ -n "$found" ]; then
  echo "unresolved intra-doc links printed as text:" >&2
  echo "$found" >&2
  exit 1
fi
echo "doc links: none printed as text"
