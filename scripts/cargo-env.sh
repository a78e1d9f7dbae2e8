# Sourced by the project's scripts: makes `cargo` findable when the scripts
# run under sudo, whose secure_path usually lacks the rustup directory.
if ! command -v cargo >/dev/null 2>&1; then
    for d in "${CARGO_HOME:-}/bin" "$HOME/.cargo/bin" \
        "$(getent passwd "${SUDO_USER:-root}" 2>/dev/null | cut -d: -f6)/.cargo/bin" \
        /root/.cargo/bin /usr/local/cargo/bin; do
        if [ -x "$d/cargo" ]; then
            export PATH="$d:$PATH"
            break
        fi
    done
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust (https://rustup.rs) or put cargo on PATH" >&2
    exit 1
fi
