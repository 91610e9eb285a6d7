#!/usr/bin/env bash
# A store author's first minutes, from the wheel: a fresh virtualenv, a project of their own with
# packages named stores/, harness/ and scenarios/ (and a scenarios/ script that must never be
# imported), the SQLite example store, and the commands the README gives.  Run by .ci/run.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# Build from the files git knows (tracked, or new and not ignored): never from a stale build/.
mkdir "$work/src"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) \
    | tar -xf - -C "$work/src"
python -m pip wheel --quiet --no-deps "$work/src" -w "$work/dist"
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet "$work"/dist/storeharness-*.whl pytest pytest-timeout
py="$work/venv/bin/python"
bin="$work/venv/bin"

proj="$work/project"
mkdir -p "$proj"
cp "$repo"/examples/sqlite_store/*.py "$proj/"
for pkg in stores harness scenarios; do
    mkdir "$proj/$pkg"
    echo "NAME = 'users-$pkg'" > "$proj/$pkg/__init__.py"
done
echo "raise SystemExit('scenarios/generate_load.py was imported by a test run')" \
    > "$proj/scenarios/generate_load.py"
cat > "$proj/test_own.py" <<'PY'
import harness
import stores


def test_the_projects_own_packages_are_its_own():
    assert (stores.NAME, harness.NAME) == ("users-stores", "users-harness")
PY
cd "$proj"

echo "-- the project's own test suite, unaffected by the installed plugin"
"$py" -m pytest -q -p no:cacheprovider test_own.py
"$bin/pytest" -q -p no:cacheprovider test_own.py

echo "-- storeharness run --store sqlitestore:SQLiteStore (the library on the user's store)"
"$bin/storeharness" run --store sqlitestore:SQLiteStore -q

echo "-- pytest --store sqlitestore:make (the user's tests and scenario files)"
"$bin/pytest" -q -p no:cacheprovider --store sqlitestore:make

echo "-- storeharness run --store tcp://127.0.0.1:PORT (a server started by hand)"
"$py" -u -m storeharness.stores.tcp --port 0 < /dev/null > "$work/server.log" 2>&1 &
server_pid=$!
port=$("$py" - "$work/server.log" <<'PY'
import re, sys, time
end = time.monotonic() + 30
while time.monotonic() < end:  # the server says which port it bound
    found = re.search(r"serving TCPStore on \S+:(\d+)", open(sys.argv[1]).read())
    if found:
        print(found.group(1))
        break
    time.sleep(0.05)
else:
    raise SystemExit("the hand-started server never said its port")
PY
)
"$bin/storeharness" run --store "tcp://127.0.0.1:$port" -q
echo "user path: ok"
