/* PbSerial: a CDC-ACM serial port on the public PbVirtualDevice API, bridged to a pty or echoing. */
#define G_LOG_DOMAIN "plugboard"

#include "pb-serial.h"

#include <errno.h>
#include <fcntl.h>
#include <glib-unix.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "pb-error.h"

#define NOTIFY_ADDRESS 0x83
#define BULK_IN_ADDRESS 0x81
#define BULK_OUT_ADDRESS 0x02
/* Bytes buffered on their way to the host (pty output or echoed data) before we stop taking more. */
#define RING_CAPACITY (64 * 1024)
/* After EIO/HUP on the pty master, wait this long before polling it again (no busy loop). */
#define MASTER_RETRY_MS 200

/* CDC PSTN 1.2, 6.3: ACM class requests. */
enum {
  CDC_SET_LINE_CODING = 0x20,
  CDC_GET_LINE_CODING = 0x21,
  CDC_SET_CONTROL_LINE_STATE = 0x22,
  CDC_SEND_BREAK = 0x23,
};

static const guint8 device_descriptor[18] = {
  18, PB_USB_DT_DEVICE,
  0x00, 0x02,       /* bcdUSB 2.00 */
  0x02, 0x00, 0x00, /* communications device class */
  64,               /* bMaxPacketSize0 */
  0x09, 0x12,       /* idVendor 0x1209 (pid.codes) */
  0x03, 0x00,       /* idProduct 0x0003 */
  0x00, 0x01,       /* bcdDevice 1.00 */
  1, 2, 3,          /* iManufacturer, iProduct, iSerialNumber */
  1,                /* bNumConfigurations */
};

#define CONFIGURATION_LENGTH (9 + 9 + 5 + 5 + 4 + 5 + 7 + 9 + 7 + 7)

static const guint8 configuration[CONFIGURATION_LENGTH] = {
  9, PB_USB_DT_CONFIG, CONFIGURATION_LENGTH, 0, 2, 1, 0, 0x80, 50,
  /* interface 0: communications, ACM, AT commands (V.250), as Linux's cdc_acm expects */
  9, PB_USB_DT_INTERFACE, 0, 0, 1, 0x02, 0x02, 0x01, 0,
  5, PB_USB_DT_CS_INTERFACE, 0x00, 0x10, 0x01,  /* Header, bcdCDC 1.10 */
  5, PB_USB_DT_CS_INTERFACE, 0x01, 0x00, 1,     /* Call Management: none on the comm class, data interface 1 */
  4, PB_USB_DT_CS_INTERFACE, 0x02, 0x02,        /* ACM: line coding and serial state */
  5, PB_USB_DT_CS_INTERFACE, 0x06, 0, 1,        /* Union: master 0, slave 1 */
  7, PB_USB_DT_ENDPOINT, NOTIFY_ADDRESS, 0x03, 16, 0, 8,  /* interrupt IN, 16 bytes, 2^7 microframes */
  /* interface 1: CDC data */
  9, PB_USB_DT_INTERFACE, 1, 0, 2, 0x0a, 0x00, 0x00, 0,
  7, PB_USB_DT_ENDPOINT, BULK_IN_ADDRESS, 0x02, 0x00, 0x02, 0,
  7, PB_USB_DT_ENDPOINT, BULK_OUT_ADDRESS, 0x02, 0x00, 0x02, 0,
};

/* A byte ring with a fixed capacity. */
typedef struct {
  guint8 *data;
  gsize head;   /* index of the oldest byte */
  gsize length; /* bytes stored */
} Ring;

struct _PbSerial {
  GObject parent_instance;

  PbVirtualDevice *device;
  /* The device's user_data: points back here until dispose, so a device that outlives its
   * PbSerial (still held by a server) finds NULL instead of freed memory. */
  PbSerialMode mode;

  /* PTY mode. We keep our own slave fd open so that the master never sees EIO/HUP when the
   * local program closes its side, and so that the raw termios we set stays in force. */
  int master_fd;
  int slave_fd;
  char *pty_path;
  GSource *master_source;  /* while open */
  gpointer master_tag;     /* the fd in master_source; NULL while not polled */
  GIOCondition master_events;
  GSource *retry_source;   /* after EIO/HUP */

  /* Bytes for the host: pty output, or the host's own data in echo mode. */
  Ring ring;

  GQueue waiting_in;      /* bulk IN URBs with nothing to send yet */
  GQueue held_out;        /* bulk OUT URBs not fully taken; progress in device_data */
  GQueue waiting_notify;  /* interrupt IN (serial state) URBs; we have nothing to notify */

  guint8 line_coding[7];  /* dwDTERate (LE), bCharFormat, bParityType, bDataBits */
  guint16 control_lines;
};

G_DEFINE_FINAL_TYPE (PbSerial, pb_serial, G_TYPE_OBJECT)

static void update_master_watch (PbSerial *self);

/* ---- ring ---- */

static gsize
ring_free (const Ring *ring)
{
  return RING_CAPACITY - ring->length;
}

/* Longest contiguous free run after the stored bytes. */
static guint8 *
ring_write_space (Ring *ring, gsize *len)
{
  gsize tail = (ring->head + ring->length) % RING_CAPACITY;

  *len = ring->length == RING_CAPACITY ? 0 : (tail >= ring->head ? RING_CAPACITY - tail : ring->head - tail);
  return ring->data + tail;
}

static gsize
ring_push (Ring *ring, const guint8 *data, gsize len)
{
  gsize done = 0;

  while (done < len)
    {
      gsize space;
      guint8 *dest = ring_write_space (ring, &space);
      gsize n = MIN (space, len - done);

      if (n == 0)
        break;
      memcpy (dest, data + done, n);
      ring->length += n;
      done += n;
    }
  return done;
}

static gsize
ring_pop (Ring *ring, guint8 *dest, gsize len)
{
  gsize done = 0;

  while (done < len && ring->length > 0)
    {
      gsize run = MIN (ring->length, RING_CAPACITY - ring->head);
      gsize n = MIN (run, len - done);

      memcpy (dest + done, ring->data + ring->head, n);
      ring->head = (ring->head + n) % RING_CAPACITY;
      ring->length -= n;
      done += n;
    }
  if (ring->length == 0)
    ring->head = 0;
  return done;
}

/* ---- URB queues ---- */

static void
hold_urb (GQueue *queue, PbUrb *urb, gpointer marker)
{
  urb->device_data = marker;
  urb->device_link.data = urb;
  g_queue_push_tail_link (queue, &urb->device_link);
}

static PbUrb *
pop_urb (GQueue *queue)
{
  GList *link = g_queue_pop_head_link (queue);
  PbUrb *urb;

  if (link == NULL)
    return NULL;
  urb = link->data;
  urb->device_data = NULL;
  return urb;
}

static void
complete_queue (GQueue *queue, gint32 status)
{
  PbUrb *urb;

  while ((urb = pop_urb (queue)) != NULL)
    {
      /* OUT progress lives in device_data; everything else carries no data when aborted. */
      pb_urb_complete (urb, status, 0);
    }
}

/* Each held OUT URB remembers how many of its bytes were taken, offset by one so that a held
 * URB is never confused with one we do not hold (device_data NULL). */
static gsize
out_progress (PbUrb *urb)
{
  return GPOINTER_TO_SIZE (urb->device_data) - 1;
}

static void
set_out_progress (PbUrb *urb, gsize taken)
{
  urb->device_data = GSIZE_TO_POINTER (taken + 1);
}

/* ---- moving bytes ---- */

/* Gives buffered bytes to waiting bulk IN URBs. */
static void
flush_in (PbSerial *self)
{
  while (self->waiting_in.length > 0 && self->ring.length > 0)
    {
      PbUrb *urb = pop_urb (&self->waiting_in);
      gsize n = ring_pop (&self->ring, urb->buffer, urb->length);

      pb_urb_complete (urb, PB_URB_OK, (guint32) n);
    }
}

/* Echo mode: moves held OUT data into the ring and the ring into IN URBs until one side stops. */
static void
echo_pump (PbSerial *self)
{
  for (;;)
    {
      PbUrb *urb;
      gsize taken;

      flush_in (self);
      if (self->held_out.length == 0 || ring_free (&self->ring) == 0)
        return;

      urb = self->held_out.head->data;
      taken = out_progress (urb);
      taken += ring_push (&self->ring, urb->buffer + taken, urb->length - taken);
      if (taken < urb->length)
        {
          set_out_progress (urb, taken);
          continue; /* the ring is full: only IN URBs can make room */
        }
      pop_urb (&self->held_out);
      pb_urb_complete (urb, PB_URB_OK, urb->length);
    }
}

/* PTY mode: writes held OUT data to the master until it would block. */
static void
pty_write_out (PbSerial *self)
{
  PbUrb *urb;

  while ((urb = self->held_out.head != NULL ? self->held_out.head->data : NULL) != NULL)
    {
      gsize taken = out_progress (urb);
      gssize n = 0;

      if (taken < urb->length)
        n = write (self->master_fd, urb->buffer + taken, urb->length - taken);
      if (n < 0)
        {
          int saved = errno;

          if (saved == EINTR)
            continue;
          if (saved == EAGAIN || saved == EWOULDBLOCK)
            break;
          /* The pty is broken: report what went through and fail the rest. */
          g_warning ("serial: writing to %s: %s", self->pty_path, g_strerror (saved));
          pop_urb (&self->held_out);
          pb_urb_complete (urb, PB_URB_EPROTO, (guint32) taken);
          continue;
        }
      taken += (gsize) n;
      if (taken < urb->length)
        {
          set_out_progress (urb, taken);
          continue;
        }
      pop_urb (&self->held_out);
      pb_urb_complete (urb, PB_URB_OK, urb->length);
    }
  update_master_watch (self);
}

static gboolean
on_master_retry (gpointer user_data)
{
  PbSerial *self = user_data;

  g_clear_pointer (&self->retry_source, g_source_unref);
  update_master_watch (self);
  pty_write_out (self);
  return G_SOURCE_REMOVE;
}

/* The master reported EIO or HUP (nobody on the slave side, which our own slave fd should
 * prevent): stop polling it for a while instead of spinning on a level-triggered error. */
static void
back_off_master (PbSerial *self)
{
  if (self->retry_source != NULL)
    return;
  self->retry_source = g_timeout_source_new (MASTER_RETRY_MS);
  g_source_set_callback (self->retry_source, on_master_retry, self, NULL);
  g_source_attach (self->retry_source, g_source_get_context (self->master_source));
  update_master_watch (self);
}

/* Reads the master into waiting IN URBs (directly when nothing is buffered) or the ring. */
static void
pty_read (PbSerial *self)
{
  for (;;)
    {
      guint8 *dest;
      gsize space;
      gssize n;
      PbUrb *direct = NULL;

      if (self->ring.length == 0 && self->waiting_in.length > 0)
        {
          direct = self->waiting_in.head->data;
          dest = direct->buffer;
          space = direct->length;
        }
      else
        dest = ring_write_space (&self->ring, &space);
      if (space == 0)
        break;

      n = read (self->master_fd, dest, space);
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        break;
      if (n <= 0)
        {
          /* EIO: the slave side has no open fd. */
          back_off_master (self);
          break;
        }
      if (direct != NULL)
        {
          pop_urb (&self->waiting_in);
          pb_urb_complete (direct, PB_URB_OK, (guint32) n);
        }
      else
        {
          self->ring.length += (gsize) n;
          flush_in (self);
        }
    }
  update_master_watch (self);
}

static gboolean
on_master_ready (gpointer user_data)
{
  PbSerial *self = user_data;
  GIOCondition revents;

  if (self->master_tag == NULL)
    return G_SOURCE_CONTINUE;
  revents = g_source_query_unix_fd (self->master_source, self->master_tag);
  if (revents & (G_IO_IN | G_IO_HUP | G_IO_ERR))
    pty_read (self);
  if (revents & G_IO_OUT)
    pty_write_out (self);
  if ((revents & (G_IO_HUP | G_IO_ERR)) && !(revents & G_IO_IN))
    back_off_master (self);
  return G_SOURCE_CONTINUE;
}

/* Polls the master for what we can use now: input while there is room, output while OUT data
 * waits. The fd leaves the poll set entirely when we want neither or while backing off. */
static void
update_master_watch (PbSerial *self)
{
  GIOCondition events = 0;

  if (self->master_source == NULL)
    return;
  if (self->retry_source == NULL)
    {
      if (ring_free (&self->ring) > 0)
        events |= G_IO_IN;
      if (self->held_out.length > 0)
        events |= G_IO_OUT;
    }
  if (events == self->master_events && (events == 0) == (self->master_tag == NULL))
    return;
  if (events == 0)
    {
      g_source_remove_unix_fd (self->master_source, self->master_tag);
      self->master_tag = NULL;
    }
  else if (self->master_tag == NULL)
    self->master_tag = g_source_add_unix_fd (self->master_source, self->master_fd, events);
  else
    g_source_modify_unix_fd (self->master_source, self->master_tag, events);
  self->master_events = events;
}

static gboolean
master_source_dispatch (GSource *source, GSourceFunc callback, gpointer user_data)
{
  return callback (user_data);
}

static GSourceFuncs master_source_funcs = {
  .dispatch = master_source_dispatch,
};

static void
start_pty (PbSerial *self)
{
  GMainContext *context = g_main_context_get_thread_default ();

  self->master_source = g_source_new (&master_source_funcs, sizeof (GSource));
  g_source_set_name (self->master_source, "PbSerial pty master");
  g_source_set_callback (self->master_source, on_master_ready, self, NULL);
  g_source_attach (self->master_source, context);
  self->master_tag = NULL;
  self->master_events = 0;
  update_master_watch (self);
}

static void
stop_pty (PbSerial *self)
{
  if (self->retry_source != NULL)
    {
      g_source_destroy (self->retry_source);
      g_clear_pointer (&self->retry_source, g_source_unref);
    }
  if (self->master_source != NULL)
    {
      g_source_destroy (self->master_source);
      g_clear_pointer (&self->master_source, g_source_unref);
    }
  self->master_tag = NULL;
  self->master_events = 0;
}

static void
reset_line_state (PbSerial *self)
{
  /* 9600 8N1 until the host says otherwise, like most CDC-ACM gadgets. */
  static const guint8 default_coding[7] = { 0x80, 0x25, 0x00, 0x00, 0, 0, 8 };

  memcpy (self->line_coding, default_coding, sizeof default_coding);
  self->control_lines = 0;
}

/* ---- PbVirtualDevice callbacks ---- */

static gboolean
line_coding_valid (const guint8 coding[7])
{
  guint32 rate = coding[0] | (coding[1] << 8) | (coding[2] << 16) | ((guint32) coding[3] << 24);
  guint8 data_bits = coding[6];

  return rate != 0 && coding[4] <= 2 && coding[5] <= 4 &&
         (data_bits == 5 || data_bits == 6 || data_bits == 7 || data_bits == 8 || data_bits == 16);
}

static gboolean
serial_control (PbVirtualDevice *device, PbUrb *urb, gpointer user_data)
{
  PbSerial *self = user_data;
  guint8 request_type = pb_urb_setup_request_type (urb);
  gboolean in = (request_type & PB_USB_DIR_IN) != 0;

  /* Class requests go to the communications interface, 0. */
  if ((request_type & PB_USB_TYPE_MASK) != PB_USB_TYPE_CLASS ||
      (request_type & PB_USB_RECIP_MASK) != PB_USB_RECIP_INTERFACE || pb_urb_setup_index (urb) != 0)
    return FALSE;

  switch (pb_urb_setup_request (urb))
    {
    case CDC_SET_LINE_CODING:
      if (in || urb->length != sizeof self->line_coding || !line_coding_valid (urb->buffer))
        return FALSE;
      memcpy (self->line_coding, urb->buffer, sizeof self->line_coding);
      pb_urb_complete (urb, PB_URB_OK, urb->length);
      return TRUE;

    case CDC_GET_LINE_CODING:
      if (!in)
        return FALSE;
      pb_urb_complete_with_data (urb, self->line_coding, MIN (sizeof self->line_coding, pb_urb_setup_length (urb)));
      return TRUE;

    case CDC_SET_CONTROL_LINE_STATE:
      if (in)
        return FALSE;
      self->control_lines = pb_urb_setup_value (urb) & 0x03;
      pb_urb_complete (urb, PB_URB_OK, 0);
      return TRUE;

    case CDC_SEND_BREAK:
      /* A pty carries no breaks; the request itself is valid and accepted. */
      if (in)
        return FALSE;
      pb_urb_complete (urb, PB_URB_OK, 0);
      return TRUE;

    default:
      return FALSE;
    }
}

static void
serial_transfer (PbVirtualDevice *device, PbUrb *urb, gpointer user_data)
{
  PbSerial *self = user_data;
  guint8 address = (guint8) (urb->ep | (urb->direction == PB_USBIP_DIR_IN ? PB_USB_DIR_IN : 0));


  switch (address)
    {
    case NOTIFY_ADDRESS:
      /* Nothing changes on our side of the line: the notification waits until cancelled. */
      hold_urb (&self->waiting_notify, urb, self);
      return;

    case BULK_IN_ADDRESS:
      if (urb->length == 0)
        {
          pb_urb_complete (urb, PB_URB_OK, 0);
          return;
        }
      hold_urb (&self->waiting_in, urb, self);
      if (self->mode == PB_SERIAL_MODE_ECHO)
        echo_pump (self);
      else
        {
          flush_in (self);
          /* The ring may have drained below full: let the master be read again. */
          update_master_watch (self);
        }
      return;

    case BULK_OUT_ADDRESS:
      if (urb->length == 0)
        {
          pb_urb_complete (urb, PB_URB_OK, 0);
          return;
        }
      /* Data stays in order behind any OUT URB already waiting. */
      hold_urb (&self->held_out, urb, NULL);
      set_out_progress (urb, 0);
      if (self->mode == PB_SERIAL_MODE_ECHO)
        echo_pump (self);
      else
        pty_write_out (self);
      return;

    default:
      pb_urb_complete (urb, PB_URB_EPIPE, 0);
      return;
    }
}

static void
serial_cancel (PbVirtualDevice *device, PbUrb *urb, gpointer user_data)
{
  PbSerial *self = user_data;
  guint32 taken = 0;

  /* device_data is non-NULL exactly while we hold the URB. */
  if (urb->device_data == NULL)
    return;
  if (urb->direction == PB_USBIP_DIR_OUT)
    {
      taken = (guint32) out_progress (urb);
      g_queue_unlink (&self->held_out, &urb->device_link);
    }
  else if (urb->ep == (NOTIFY_ADDRESS & 0x0f))
    g_queue_unlink (&self->waiting_notify, &urb->device_link);
  else
    g_queue_unlink (&self->waiting_in, &urb->device_link);
  urb->device_data = NULL;
  /* An OUT URB reports the bytes that already went out, as a real controller would. */
  pb_urb_complete (urb, PB_URB_ECONNRESET, taken);
  if (self->mode == PB_SERIAL_MODE_ECHO)
    echo_pump (self);
  else
    update_master_watch (self);
}

static void
serial_opened (PbVirtualDevice *device, gpointer user_data)
{
  PbSerial *self = user_data;

  reset_line_state (self);
  if (self->mode == PB_SERIAL_MODE_PTY)
    start_pty (self);
}

static void
serial_closed (PbVirtualDevice *device, gpointer user_data)
{
  PbSerial *self = user_data;

  /* The framework completes every request before closing; this only guards that promise. */
  complete_queue (&self->waiting_in, PB_URB_ESHUTDOWN);
  complete_queue (&self->held_out, PB_URB_ESHUTDOWN);
  complete_queue (&self->waiting_notify, PB_URB_ESHUTDOWN);
  stop_pty (self);
  /* Unplugged: bytes the host never took are gone (the pty keeps what we had not read). */
  self->ring.head = self->ring.length = 0;
  reset_line_state (self);
}

static const PbVirtualDeviceOps serial_ops = {
  .control = serial_control,
  .transfer = serial_transfer,
  .cancel = serial_cancel,
  .opened = serial_opened,
  .closed = serial_closed,
};

/* ---- public ---- */

static gboolean
open_pty (PbSerial *self, GError **error)
{
  struct termios termios;
  char path[128];
  int flags;

  self->master_fd = posix_openpt (O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (self->master_fd < 0 || grantpt (self->master_fd) != 0 || unlockpt (self->master_fd) != 0 ||
      ptsname_r (self->master_fd, path, sizeof path) != 0)
    {
      int saved = errno;
      g_set_error (error, PB_ERROR, PB_ERROR_FAILED, "cannot create a pseudo-terminal: %s", g_strerror (saved));
      return FALSE;
    }
  self->pty_path = g_strdup (path);

  self->slave_fd = open (path, O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (self->slave_fd < 0 || tcgetattr (self->slave_fd, &termios) != 0)
    {
      int saved = errno;
      g_set_error (error, PB_ERROR, PB_ERROR_FAILED, "cannot open %s: %s", path, g_strerror (saved));
      return FALSE;
    }
  /* Bytes pass unchanged both ways: no echo, no line editing, no CR/NL translation. */
  cfmakeraw (&termios);
  if (tcsetattr (self->slave_fd, TCSANOW, &termios) != 0)
    {
      int saved = errno;
      g_set_error (error, PB_ERROR, PB_ERROR_FAILED, "cannot make %s raw: %s", path, g_strerror (saved));
      return FALSE;
    }

  flags = fcntl (self->master_fd, F_GETFL);
  if (flags < 0 || fcntl (self->master_fd, F_SETFL, flags | O_NONBLOCK) != 0)
    {
      int saved = errno;
      g_set_error (error, PB_ERROR, PB_ERROR_FAILED, "cannot make the pty master non-blocking: %s",
                   g_strerror (saved));
      return FALSE;
    }
  return TRUE;
}

PbSerial *
pb_serial_new (PbSerialMode mode, GError **error)
{
  g_autoptr(PbSerial) self = NULL;
  g_autoptr(GError) local_error = NULL;
  g_autofree char *serial = NULL;
  static gint instances;

  g_return_val_if_fail (mode == PB_SERIAL_MODE_ECHO || mode == PB_SERIAL_MODE_PTY, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  self = g_object_new (PB_TYPE_SERIAL, NULL);
  self->mode = mode;
  if (mode == PB_SERIAL_MODE_PTY && !open_pty (self, error))
    return NULL;

  self->device = pb_virtual_device_new (&serial_ops, self, NULL);
  if (!pb_virtual_device_set_descriptors (self->device, PB_USBIP_SPEED_HIGH, device_descriptor,
                                          sizeof device_descriptor, configuration, sizeof configuration,
                                          &local_error))
    {
      /* Our own constant descriptors: a programming error. */
      g_critical ("serial descriptors rejected: %s", local_error->message);
      g_propagate_error (error, g_steal_pointer (&local_error));
      return NULL;
    }
  pb_virtual_device_set_string (self->device, 1, "Plugboard");
  pb_virtual_device_set_string (self->device, 2, "Plugboard Virtual Serial");
  /* Distinct serials keep udev's by-id links apart when one process serves several. */
  serial = g_strdup_printf ("PBACM%04d", g_atomic_int_add (&instances, 1) + 1);
  pb_virtual_device_set_string (self->device, 3, serial);
  pb_device_set_description (PB_DEVICE (self->device), "Plugboard virtual serial port");
  return g_steal_pointer (&self);
}

PbVirtualDevice *
pb_serial_get_device (PbSerial *self)
{
  g_return_val_if_fail (PB_IS_SERIAL (self), NULL);
  return self->device;
}

const char *
pb_serial_get_pty_path (PbSerial *self)
{
  g_return_val_if_fail (PB_IS_SERIAL (self), NULL);
  return self->pty_path;
}

void
pb_serial_get_line_coding (PbSerial *self, guint32 *rate, guint8 *stop_bits, guint8 *parity, guint8 *data_bits)
{
  const guint8 *c;

  g_return_if_fail (PB_IS_SERIAL (self));
  c = self->line_coding;
  if (rate != NULL)
    *rate = c[0] | (c[1] << 8) | (c[2] << 16) | ((guint32) c[3] << 24);
  if (stop_bits != NULL)
    *stop_bits = c[4];
  if (parity != NULL)
    *parity = c[5];
  if (data_bits != NULL)
    *data_bits = c[6];
}

guint16
pb_serial_get_control_lines (PbSerial *self)
{
  g_return_val_if_fail (PB_IS_SERIAL (self), 0);
  return self->control_lines;
}

static void
pb_serial_dispose (GObject *object)
{
  PbSerial *self = PB_SERIAL (object);

  /* Held URBs still belong to a session: finish them before the device loses its program. */
  complete_queue (&self->waiting_in, PB_URB_ESHUTDOWN);
  complete_queue (&self->held_out, PB_URB_ESHUTDOWN);
  complete_queue (&self->waiting_notify, PB_URB_ESHUTDOWN);
  stop_pty (self);
  /* A server or session may keep the device: it must never call into us again. */
  if (self->device != NULL)
    pb_virtual_device_detach (self->device);
  g_clear_object (&self->device);
  G_OBJECT_CLASS (pb_serial_parent_class)->dispose (object);
}

static void
pb_serial_finalize (GObject *object)
{
  PbSerial *self = PB_SERIAL (object);

  if (self->master_fd >= 0)
    close (self->master_fd);
  if (self->slave_fd >= 0)
    close (self->slave_fd);
  g_free (self->pty_path);
  g_free (self->ring.data);
  G_OBJECT_CLASS (pb_serial_parent_class)->finalize (object);
}

static void
pb_serial_class_init (PbSerialClass *klass)
{
  GObjectClass *object_class = G_OBJECT_CLASS (klass);

  object_class->dispose = pb_serial_dispose;
  object_class->finalize = pb_serial_finalize;
}

static void
pb_serial_init (PbSerial *self)
{
  self->master_fd = -1;
  self->slave_fd = -1;
  self->ring.data = g_malloc (RING_CAPACITY);
  reset_line_state (self);
}
