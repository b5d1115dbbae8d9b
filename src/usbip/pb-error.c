#include "pb-error.h"

G_DEFINE_QUARK (pb-error-quark, pb_error)
