#!/bin/sh
# The scripted coding session of the workload tier, run as the agent: clone the
# company's repository over HTTPS, make a virtualenv and install a wheel from the
# company's index, install an npm package from its registry, build C and Rust,
# run the Python and JavaScript tests, commit and push back. Every host name is
# resolved through the resolver /etc/resolv.conf names (under the enforcer, its
# own). Each phase is bracketed by "phase: NAME start|end NANOSECONDS" lines on
# the guest clock (under -icount, instructions): `cargo xtask bench workload`
# reads them.
#
# A platform team points a coding agent's caches at its write trees; the rest is
# what a developer would type. Programs run from the workspace only through an
# interpreter (`python -m pytest`, `python -m pip`): policies/coding-agent.toml
# executes nothing from a tree the agent can write.
set -eu

phase() { echo "phase: $1 $2 $(date +%s%N)"; }

export HOME=/root
export XDG_CACHE_HOME=/tmp/agent-cache CARGO_HOME=/tmp/agent-cache/cargo npm_config_cache=/tmp/agent-cache/npm
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_INDEX_URL=https://pypi.corp.test/simple/
export npm_config_registry=https://npm.corp.test/ npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false
export NODE_EXTRA_CA_CERTS=/usr/local/share/ca-certificates/corp-test-ca.crt
export GIT_AUTHOR_NAME=agent GIT_AUTHOR_EMAIL=agent@corp.test GIT_COMMITTER_NAME=agent GIT_COMMITTER_EMAIL=agent@corp.test
WORK=${WORKLOAD_DIR:-/workspace/project}
rm -rf "$WORK"

phase clone start
git clone -q https://git.corp.test/project.git "$WORK"
phase clone end

phase pip start
# The system's pytest and pip serve the virtualenv (Debian packages them).
python3 -m venv --system-site-packages --without-pip "$WORK/.venv"
"$WORK/.venv/bin/python" -m pip install -q corp-greeting
phase pip end

phase npm start
(cd "$WORK/web" && npm install --loglevel=error)
phase npm end

phase build start
make -s -C "$WORK/native"
(cd "$WORK/tool" && cargo build -q --offline)
phase build end

phase test start
(cd "$WORK" && .venv/bin/python -m pytest -q tests)
(cd "$WORK/web" && npm test --silent)
phase test end

phase push start
cd "$WORK"
printf '\nSum of 1 to 4: %s\n' "$(.venv/bin/python -c 'import greet; print(greet.total([1, 2, 3, 4]))')" >> README.md
git add README.md web/package-lock.json
git commit -q -m "Document the sum; lock the web dependencies"
git push -q origin main
phase push end
echo "session: done"
