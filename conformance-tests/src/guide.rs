//! The backend author's guide (filled in below).
