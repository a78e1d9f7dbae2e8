//! # netlab — network-namespace test lab
