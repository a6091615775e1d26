//! scope-router: an OpenStackoïd scope-interpreting edge router.
