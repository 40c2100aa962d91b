// The helpers are all static inline in the header; this file gives SwiftPM a C target to build.
#include "CVhostUser.h"
