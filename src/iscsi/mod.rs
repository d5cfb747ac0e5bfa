//! iscsi (in progress)
