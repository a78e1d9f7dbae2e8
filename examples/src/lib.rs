//! Demonstrations and lab benchmark programs (see `src/bin/`).
