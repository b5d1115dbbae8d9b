#define G_LOG_DOMAIN "plugboard"

#include "pb-remote.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>

/* "host:3240", "[::1]:3240": an IPv6 literal needs brackets to keep its port apart. */
static char *
format_host_port (const char *host, guint16 port)
{
  if (strchr (host, ':') != NULL && host[0] != '[')
    return g_strdup_printf ("[%s]:%u", host, port);
  return g_strdup_printf ("%s:%u", host, port);
}

/* The address of the server at the other end, for messages. */
static char *
describe_peer (GSocketConnection *connection)
{
  g_autoptr(GSocketAddress) address = g_socket_connection_get_remote_address (connection, NULL);
  g_autofree char *host = NULL;

  if (address == NULL || !G_IS_INET_SOCKET_ADDRESS (address))
    return g_strdup ("the server");
  host = g_inet_address_to_string (g_inet_socket_address_get_address (G_INET_SOCKET_ADDRESS (address)));
  return format_host_port (host, g_inet_socket_address_get_port (G_INET_SOCKET_ADDRESS (address)));
}

static void
propagate_connect_error (GError **error, GError *local_error, const char *host, guint16 port)
{
  g_autofree char *where = format_host_port (host, port);

  /* A cancelled call stays a G_IO_ERROR_CANCELLED, as callers of GIO expect. */
  if (g_error_matches (local_error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
    g_propagate_error (error, g_steal_pointer (&local_error));
  else if (g_error_matches (local_error, G_IO_ERROR, G_IO_ERROR_CONNECTION_REFUSED))
    g_set_error (error, PB_ERROR, PB_ERROR_REFUSED,
                 "connection to %s refused (is a USB/IP server running there?)", where);
  else if (g_error_matches (local_error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT))
    g_set_error (error, PB_ERROR, PB_ERROR_TIMED_OUT, "no answer from %s within %d s", where,
                 PB_REMOTE_TIMEOUT_SECONDS);
  else if (local_error->domain == G_RESOLVER_ERROR)
    g_set_error (error, PB_ERROR, PB_ERROR_UNREACHABLE, "unknown host %s: %s", host, local_error->message);
  else
    g_set_error (error, PB_ERROR, PB_ERROR_UNREACHABLE, "cannot connect to %s: %s", where, local_error->message);
  g_clear_error (&local_error);
}

GSocketConnection *
pb_remote_connect (const char *host, guint16 port, GCancellable *cancellable, GError **error)
{
  g_autoptr(GSocketClient) client = NULL;
  GError *local_error = NULL;
  GSocketConnection *connection;
  GSocket *socket;
  int one = 1;

  g_return_val_if_fail (host != NULL, NULL);

  client = g_socket_client_new ();
  g_socket_client_set_timeout (client, PB_REMOTE_TIMEOUT_SECONDS);
  connection = g_socket_client_connect_to_host (client, host, port, cancellable, &local_error);
  if (connection == NULL)
    {
      propagate_connect_error (error, local_error, host, port);
      return NULL;
    }
  socket = g_socket_connection_get_socket (connection);
  /* Nagle would hold back every small control transfer for an ACK. */
  setsockopt (g_socket_get_fd (socket), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  g_socket_set_keepalive (socket, TRUE);
  /* Each blocking step of the management phase gets this long. */
  g_socket_set_timeout (socket, PB_REMOTE_TIMEOUT_SECONDS);
  return connection;
}

/* A connection that came from elsewhere gets the per-step timeout too, unless it has one. */
static void
ensure_timeout (GSocketConnection *connection)
{
  GSocket *socket = g_socket_connection_get_socket (connection);

  if (g_socket_get_timeout (socket) == 0)
    g_socket_set_timeout (socket, PB_REMOTE_TIMEOUT_SECONDS);
}

/* Reads exactly len bytes; a short read is the server closing on us. */
static gboolean
read_exact (GSocketConnection *connection, guint8 *buf, gsize len, const char *what, GCancellable *cancellable,
            GError **error)
{
  GError *local_error = NULL;
  gsize got = 0;

  if (!g_input_stream_read_all (g_io_stream_get_input_stream (G_IO_STREAM (connection)), buf, len, &got, cancellable,
                                &local_error))
    {
      if (g_error_matches (local_error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT))
        g_set_error (error, PB_ERROR, PB_ERROR_TIMED_OUT, "no %s from the server within %u s", what,
                     g_socket_get_timeout (g_socket_connection_get_socket (connection)));
      else if (g_error_matches (local_error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
        {
          g_propagate_error (error, g_steal_pointer (&local_error));
          return FALSE;
        }
      else
        g_set_error (error, PB_ERROR, PB_ERROR_CLOSED, "reading the %s failed: %s", what, local_error->message);
      g_clear_error (&local_error);
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
  GError *local_error = NULL;

  if (!g_output_stream_write_all (g_io_stream_get_output_stream (G_IO_STREAM (connection)), buf, len, NULL,
                                  cancellable, &local_error))
    {
      if (g_error_matches (local_error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
        g_propagate_error (error, g_steal_pointer (&local_error));
      else if (g_error_matches (local_error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT))
        g_set_error (error, PB_ERROR, PB_ERROR_TIMED_OUT, "the server took no request within %u s",
                     g_socket_get_timeout (g_socket_connection_get_socket (connection)));
      else
        g_set_error (error, PB_ERROR, PB_ERROR_CLOSED, "sending the request failed: %s", local_error->message);
      g_clear_error (&local_error);
      return FALSE;
    }
  return TRUE;
}

static gboolean
read_reply_header (GSocketConnection *connection, guint16 expected_code, PbUsbipOpHeader *header,
                   GCancellable *cancellable, GError **error)
{
  guint8 buf[PB_USBIP_OP_HEADER_SIZE];
  g_autoptr(GError) local_error = NULL;

  if (!read_exact (connection, buf, sizeof buf, "reply header", cancellable, error))
    return FALSE;
  if (!pb_usbip_op_header_decode (buf, sizeof buf, header, &local_error))
    {
      if (g_error_matches (local_error, PB_ERROR, PB_ERROR_VERSION_MISMATCH))
        g_set_error (error, PB_ERROR, PB_ERROR_VERSION_MISMATCH,
                     "the server speaks USB/IP version 0x%04x; plugboard speaks 0x%04x", header->version,
                     PB_USBIP_VERSION);
      else
        g_set_error (error, local_error->domain, local_error->code, "malformed reply: %s", local_error->message);
      return FALSE;
    }
  if (header->code != expected_code)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_PROTOCOL, "the server answered with code 0x%04x (expected 0x%04x)",
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
  g_autoptr(GPtrArray) devices = NULL;
  guint32 count;

  g_return_val_if_fail (G_IS_SOCKET_CONNECTION (connection), NULL);

  ensure_timeout (connection);
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
  /* Checked before anything is allocated for them. */
  if (count > PB_USBIP_MAX_DEVLIST_DEVICES)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_TOO_LARGE, "the server announces %u devices (at most %d accepted)", count,
                   PB_USBIP_MAX_DEVLIST_DEVICES);
      return NULL;
    }
  devices = g_ptr_array_new_full (count, g_free);
  for (guint32 i = 0; i < count; i++)
    {
      g_autofree PbUsbipDeviceRecord *record = g_new0 (PbUsbipDeviceRecord, 1);

      if (!read_exact (connection, record_buf, sizeof record_buf, "device record", cancellable, error))
        return NULL;
      if (!pb_usbip_device_record_decode (record_buf, sizeof record_buf, record, error))
        {
          g_prefix_error (error, "device %u of %u: ", i + 1, count);
          return NULL;
        }
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
    {
      g_autofree char *where = format_host_port (host, port);
      g_prefix_error (error, "listing the devices of %s: ", where);
    }
  return devices;
}

gboolean
pb_remote_import_on (GSocketConnection *connection, const char *busid, PbUsbipDeviceRecord *record,
                     GCancellable *cancellable, GError **error)
{
  guint8 request[PB_USBIP_REQ_IMPORT_SIZE];
  guint8 record_buf[PB_USBIP_DEVICE_RECORD_SIZE];
  PbUsbipOpHeader header;
  g_autofree char *peer = NULL;

  g_return_val_if_fail (G_IS_SOCKET_CONNECTION (connection), FALSE);
  g_return_val_if_fail (busid != NULL, FALSE);
  g_return_val_if_fail (record != NULL, FALSE);

  ensure_timeout (connection);
  if (!pb_usbip_req_import_encode (request, busid, error))
    return FALSE;
  if (!write_all (connection, request, sizeof request, cancellable, error) ||
      !read_reply_header (connection, PB_USBIP_OP_REP_IMPORT, &header, cancellable, error))
    {
      g_prefix_error (error, "importing %s: ", busid);
      return FALSE;
    }

  switch (header.status)
    {
    case PB_USBIP_ST_OK:
      break;
    case PB_USBIP_ST_DEV_BUSY:
      g_set_error (error, PB_ERROR, PB_ERROR_BUSY, "device %s is busy: already imported by another client", busid);
      return FALSE;
    case PB_USBIP_ST_NODEV:
      peer = describe_peer (connection);
      g_set_error (error, PB_ERROR, PB_ERROR_NOT_FOUND, "no device with bus ID %s on %s", busid, peer);
      return FALSE;
    case PB_USBIP_ST_DEV_ERR:
      g_set_error (error, PB_ERROR, PB_ERROR_DEVICE, "device %s failed on the server", busid);
      return FALSE;
    default:
      g_set_error (error, PB_ERROR, PB_ERROR_FAILED, "the server refused to export %s: %s", busid,
                   pb_usbip_op_status_to_string (header.status));
      return FALSE;
    }

  if (!read_exact (connection, record_buf, sizeof record_buf, "device record", cancellable, error) ||
      !pb_usbip_device_record_decode (record_buf, sizeof record_buf, record, error))
    {
      g_prefix_error (error, "importing %s: ", busid);
      return FALSE;
    }
  /* As the Linux client: a reply for another device is no import of this one. */
  if (strcmp (record->busid, busid) != 0)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_PROTOCOL, "the server answered the import of %s for bus ID %s", busid,
                   record->busid);
      return FALSE;
    }
  record->num_interfaces = 0; /* the import reply carries none */
  return TRUE;
}

PbRemoteDevice *
pb_remote_import (const char *host, guint16 port, const char *busid, GCancellable *cancellable, GError **error)
{
  g_autoptr(GSocketConnection) connection = NULL;
  PbUsbipDeviceRecord record;

  g_return_val_if_fail (host != NULL, NULL);
  g_return_val_if_fail (busid != NULL, NULL);

  connection = pb_remote_connect (host, port, cancellable, error);
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
