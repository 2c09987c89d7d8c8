# Sourced by the project's scripts: finds cargo and a real Python interpreter.
# rustup installs cargo in ~/.cargo/bin, which a root shell's PATH may lack.
if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust 1.88 or newer with rustup (https://rustup.rs), then run this again" >&2
    exit 1
fi
# The interpreter itself, not a wrapper script: tests stop what they start by PID. A fresh machine
# may have no python3 until scripts/setup-debian.sh installs it: demo.sh and test.sh call
# find_python again after it.
find_python() {
    PYTHON=$(python3 -c 'import sys; print(sys.executable)')
    export PYTHON
}
if command -v python3 >/dev/null 2>&1; then find_python; fi
