#define G_LOG_DOMAIN "plugboard"

#include "pb-remote.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>

static GError *
map_connect_error (const GError *error, const char *host, guint16 port)
{
  if (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CONNECTION_REFUSED))
    return g_error_new (PB_ERROR, PB_ERROR_REFUSED, "connection to %s port %u refused (is a USB/IP server running there?)",
                        host, port);
  if (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT))
    return g_error_new (PB_ERROR, PB_ERROR_TIMED_OUT, "no answer from %s port %u within %d s", host, port,
                        PB_REMOTE_TIMEOUT_SECONDS);
  if (error->domain == G_RESOLVER_ERROR)
    return g_error_new (PB_ERROR, PB_ERROR_UNREACHABLE, "unknown host %s: %s", host, error->message);
  return g_error_new (PB_ERROR, PB_ERROR_UNREACHABLE, "cannot connect to %s port %u: %s", host, port, error->message);
}

GSocketConnection *
pb_remote_connect (const char *host, guint16 port, GCancellable *cancellable, GError **error)
{
  g_autoptr(GSocketClient) client = g_socket_client_new ();
  g_autoptr(GError) local_error = NULL;
  GSocketConnection *connection;
  GSocket *socket;
  int one = 1;

  g_return_val_if_fail (host != NULL, NULL);

  g_socket_client_set_timeout (client, PB_REMOTE_TIMEOUT_SECONDS);
  connection = g_socket_client_connect_to_host (client, host, port, cancellable, &local_error);
  if (connection == NULL)
    {
      g_propagate_error (error, map_connect_error (local_error, host, port));
      return NULL;
    }
  socket = g_socket_connection_get_socket (connection);
  setsockopt (g_socket_get_fd (socket), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  g_socket_set_keepalive (socket, TRUE);
  g_socket_set_timeout (socket, PB_REMOTE_TIMEOUT_SECONDS);
  return connection;
}

/* Reads exactly len bytes; a short read is the server closing on us. */
static gboolean
read_exact (GSocketConnection *connection, guint8 *buf, gsize len, const char *what, GCancellable *cancellable,
            GError **error)
{
  g_autoptr(GError) local_error = NULL;
  gsize got = 0;

  if (!g_input_stream_read_all (g_io_stream_get_input_stream (G_IO_STREAM (connection)), buf, len, &got, cancellable,
                                &local_error))
    {
      if (g_error_matches (local_error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT))
        g_set_error (error, PB_ERROR, PB_ERROR_TIMED_OUT, "no %s from the server within %d s", what,
                     PB_REMOTE_TIMEOUT_SECONDS);
      else
        g_set_error (error, PB_ERROR, PB_ERROR_CLOSED, "reading the %s failed: %s", what, local_error->message);
      return FALSE;
    }
  if (got < len)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_CLOSED, "the server closed the connection in the %s (%" G_GSIZE_FORMAT
                   " of %" G_GSIZE_FORMAT " bytes)", what, got, len);
      return FALSE;
    }
  return TRUE;
}

static gboolean
write_all (GSocketConnection *connection, const guint8 *buf, gsize len, GCancellable *cancellable, GError **error)
{
  g_autoptr(GError) local_error = NULL;

  if (!g_output_stream_write_all (g_io_stream_get_output_stream (G_IO_STREAM (connection)), buf, len, NULL,
                                  cancellable, &local_error))
    {
      g_set_error (error, PB_ERROR, PB_ERROR_CLOSED, "sending the request failed: %s", local_error->message);
      return FALSE;
    }
  return TRUE;
}

static gboolean
read_reply_header (GSocketConnection *connection, guint16 expected_code, PbUsbipOpHeader *header,
                   GCancellable *cancellable, GError **error)
{
  guint8 buf[PB_USBIP_OP_HEADER_SIZE];

  if (!read_exact (connection, buf, sizeof buf, "reply header", cancellable, error))
    return FALSE;
  if (!pb_usbip_op_header_decode (buf, sizeof buf, header, error))
    {
      g_prefix_error (error, "server reply: ");
      return FALSE;
    }
  if (header->code != expected_code)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_PROTOCOL, "server answered with code 0x%04x (expected 0x%04x)",
                   header->code, expected_code);
      return FALSE;
    }
  return TRUE;
}

GPtrArray *
pb_remote_list_devices_on (GSocketConnection *connection, GCancellable *cancellable, GError **error)
{
  guint8 request[PB_USBIP_OP_HEADER_SIZE];
  guint8 count_buf[4];
  guint8 record_buf[PB_USBIP_DEVICE_RECORD_SIZE];
  PbUsbipOpHeader header;
  g_autoptr(GPtrArray) devices = g_ptr_array_new_with_free_func (g_free);
  guint32 count;

  pb_usbip_op_header_encode (request, PB_USBIP_OP_REQ_DEVLIST, 0);
  if (!write_all (connection, request, sizeof request, cancellable, error) ||
      !read_reply_header (connection, PB_USBIP_OP_REP_DEVLIST, &header, cancellable, error))
    return NULL;
  if (header.status != PB_USBIP_ST_OK)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_FAILED, "the server refused to list its devices: %s",
                   pb_usbip_op_status_to_string (header.status));
      return NULL;
    }
  if (!read_exact (connection, count_buf, sizeof count_buf, "device count", cancellable, error))
    return NULL;
  count = pb_read_be32 (count_buf);
  if (count > PB_USBIP_MAX_DEVLIST_DEVICES)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_TOO_LARGE, "the server announces %u devices (at most %d accepted)", count,
                   PB_USBIP_MAX_DEVLIST_DEVICES);
      return NULL;
    }
  for (guint32 i = 0; i < count; i++)
    {
      g_autofree PbUsbipDeviceRecord *record = g_new0 (PbUsbipDeviceRecord, 1);

      if (!read_exact (connection, record_buf, sizeof record_buf, "device record", cancellable, error) ||
          !pb_usbip_device_record_decode (record_buf, sizeof record_buf, record, error))
        return NULL;
      for (guint j = 0; j < record->num_interfaces; j++)
        {
          guint8 interface_buf[PB_USBIP_INTERFACE_RECORD_SIZE];
          if (!read_exact (connection, interface_buf, sizeof interface_buf, "interface record", cancellable, error) ||
              !pb_usbip_interface_record_decode (interface_buf, sizeof interface_buf, &record->interfaces[j], error))
            return NULL;
        }
      g_ptr_array_add (devices, g_steal_pointer (&record));
    }
  return g_steal_pointer (&devices);
}

GPtrArray *
pb_remote_list_devices (const char *host, guint16 port, GCancellable *cancellable, GError **error)
{
  g_autoptr(GSocketConnection) connection = pb_remote_connect (host, port, cancellable, error);
  GPtrArray *devices;

  if (connection == NULL)
    return NULL;
  devices = pb_remote_list_devices_on (connection, cancellable, error);
  g_io_stream_close (G_IO_STREAM (connection), NULL, NULL);
  if (devices == NULL)
    g_prefix_error (error, "listing devices of %s: ", host);
  return devices;
}

gboolean
pb_remote_import_on (GSocketConnection *connection, const char *busid, PbUsbipDeviceRecord *record,
                     GCancellable *cancellable, GError **error)
{
  guint8 request[PB_USBIP_REQ_IMPORT_SIZE];
  guint8 record_buf[PB_USBIP_DEVICE_RECORD_SIZE];
  PbUsbipOpHeader header;

  if (!pb_usbip_req_import_encode (request, busid, error) ||
      !write_all (connection, request, sizeof request, cancellable, error) ||
      !read_reply_header (connection, PB_USBIP_OP_REP_IMPORT, &header, cancellable, error))
    return FALSE;

  switch (header.status)
    {
    case PB_USBIP_ST_OK:
      break;
    case PB_USBIP_ST_DEV_BUSY:
      g_set_error (error, PB_ERROR, PB_ERROR_BUSY, "device %s is busy: already imported by another client", busid);
      return FALSE;
    case PB_USBIP_ST_NODEV:
      g_set_error (error, PB_ERROR, PB_ERROR_NOT_FOUND, "no device with bus ID %s", busid);
      return FALSE;
    case PB_USBIP_ST_DEV_ERR:
      g_set_error (error, PB_ERROR, PB_ERROR_DEVICE, "device %s failed to open on the server", busid);
      return FALSE;
    default:
      g_set_error (error, PB_ERROR, PB_ERROR_FAILED, "the server refused to export %s: %s", busid,
                   pb_usbip_op_status_to_string (header.status));
      return FALSE;
    }

  if (!read_exact (connection, record_buf, sizeof record_buf, "device record", cancellable, error) ||
      !pb_usbip_device_record_decode (record_buf, sizeof record_buf, record, error))
    return FALSE;
  if (strcmp (record->busid, busid) != 0)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_PROTOCOL, "the server answered for bus ID %s instead of %s", record->busid,
                   busid);
      return FALSE;
    }
  record->num_interfaces = 0; /* the import reply carries none */
  return TRUE;
}

PbRemoteDevice *
pb_remote_import (const char *host, guint16 port, const char *busid, GCancellable *cancellable, GError **error)
{
  g_autoptr(GSocketConnection) connection = pb_remote_connect (host, port, cancellable, error);
  PbUsbipDeviceRecord record;

  if (connection == NULL)
    return NULL;
  if (!pb_remote_import_on (connection, busid, &record, cancellable, error))
    {
      g_io_stream_close (G_IO_STREAM (connection), NULL, NULL);
      g_prefix_error (error, "%s: ", host);
      return NULL;
    }
  return pb_remote_device_new (connection, &record);
}
