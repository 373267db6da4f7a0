#!/usr/bin/env bash
# Runs schemathesis (PyPI) against a running tokenfab's own /openapi.json: property-based
# requests built from the document, valid and invalid, checked for zero 5xx and answers
# that match the declared schemas, status codes and content types.
#
#   scripts/schemathesis.sh BASE_URL USER_KEY ADMIN_KEY [EXAMPLES]
#
# The user routes run with USER_KEY, then the admin API (its `admin` tag) with ADMIN_KEY,
# one after the other: the admin run may revoke keys. EXAMPLES (default 25) is the number
# of generated cases per operation and phase; crates/tokenfab/tests/schemathesis.rs runs a
# short pass in CI, `TOKENFAB_SCHEMATHESIS_EXAMPLES=1000 cargo test --release -p tokenfab
# --test schemathesis` a long one. Needs schemathesis in .venv (scripts/test.sh installs
# it) or $TOKENFAB_TEST_PYTHON's environment.
set -euo pipefail
base=$1 user=$2 admin=$3 examples=${4:-25}
python=${TOKENFAB_TEST_PYTHON:-"$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python"}
st=("$python" -m schemathesis.cli run "$base/openapi.json"
    --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance,negative_data_rejection
    --max-examples "$examples" --seed 20261206 --workers 2 --request-timeout 60
    --suppress-health-check all --no-color)
# schemathesis keeps its example database in the working directory: a throwaway one.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
echo "== schemathesis: user routes"
"${st[@]}" --exclude-tag admin -H "Authorization: Bearer $user"
echo "== schemathesis: admin API"
"${st[@]}" --include-tag admin -H "Authorization: Bearer $admin" --phases fuzzing,stateful
