# Sourced by scripts/setup.sh and the scripts that use what it installs outside apt and cargo.
#
# schemathesis lives in its own virtualenv at a fixed place, so that finding it does not depend
# on the caller's PATH (pip's --user bin directory is on no PATH a CI job is given) nor on
# whether the system Python lets pip install into it.
VIREO_DEV_TOOLS="${VIREO_DEV_TOOLS:-${XDG_DATA_HOME:-$HOME/.local/share}/vireo-dev}"
SCHEMATHESIS="$VIREO_DEV_TOOLS/venv/bin/st"
