/* Plugboard's error domain, shared by every layer. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define PB_ERROR (pb_error_quark ())

typedef enum {
  PB_ERROR_FAILED,            /* anything not listed below */
  PB_ERROR_PROTOCOL,          /* the peer sent something malformed or out of bounds */
  PB_ERROR_VERSION_MISMATCH,  /* the peer speaks another USB/IP protocol version */
  PB_ERROR_TOO_LARGE,         /* a length from the peer is over our documented cap */
  PB_ERROR_BUSY,              /* the device is already imported by someone */
  PB_ERROR_NOT_FOUND,         /* no such bus ID / device */
  PB_ERROR_REFUSED,           /* connection refused or the server declined */
  PB_ERROR_CLOSED,            /* the peer closed the connection */
  PB_ERROR_DEVICE,            /* the device failed (DEV_ERR, I/O error, gone) */
  PB_ERROR_NOT_AUTHORIZED,    /* polkit said no */
  PB_ERROR_INVALID_ARGUMENT,  /* the caller's input is wrong (bad option, bad descriptor) */
  PB_ERROR_TIMED_OUT,
  PB_ERROR_UNREACHABLE,       /* unknown host, no route */
} PbError;

GQuark pb_error_quark (void);

G_END_DECLS
