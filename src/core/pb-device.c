#define G_LOG_DOMAIN "plugboard"

#include "pb-device.h"

#include <string.h>

#include "pb-error.h"

typedef struct {
  char *busid;
  guint32 busnum;
  guint32 devnum;
  char *description;
  gboolean open;
  gboolean vanished;
} PbDevicePrivate;

G_DEFINE_ABSTRACT_TYPE_WITH_PRIVATE (PbDevice, pb_device, G_TYPE_OBJECT)

enum { SIGNAL_VANISHED, N_SIGNALS };
static guint signals[N_SIGNALS];

static void
pb_device_finalize (GObject *object)
{
  PbDevicePrivate *priv = pb_device_get_instance_private (PB_DEVICE (object));

  g_free (priv->busid);
  g_free (priv->description);
  G_OBJECT_CLASS (pb_device_parent_class)->finalize (object);
}

static void
pb_device_class_init (PbDeviceClass *klass)
{
  G_OBJECT_CLASS (klass)->finalize = pb_device_finalize;

  /* The hardware went away (unplugged, or every transfer says so). Emitted once. */
  signals[SIGNAL_VANISHED] = g_signal_new ("vanished", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0, NULL,
                                           NULL, NULL, G_TYPE_NONE, 0);
}

static void
pb_device_init (PbDevice *self)
{
}

void
pb_device_set_address (PbDevice *self, guint32 busnum, guint32 devnum, const char *busid)
{
  PbDevicePrivate *priv = pb_device_get_instance_private (self);

  g_return_if_fail (PB_IS_DEVICE (self));
  g_return_if_fail (busid != NULL && strlen (busid) < PB_USBIP_BUSID_SIZE);

  priv->busnum = busnum;
  priv->devnum = devnum;
  g_free (priv->busid);
  priv->busid = g_strdup (busid);
}

const char *
pb_device_get_busid (PbDevice *self)
{
  PbDevicePrivate *priv = pb_device_get_instance_private (self);
  return priv->busid;
}

guint32
pb_device_get_busnum (PbDevice *self)
{
  PbDevicePrivate *priv = pb_device_get_instance_private (self);
  return priv->busnum;
}

guint32
pb_device_get_devnum (PbDevice *self)
{
  PbDevicePrivate *priv = pb_device_get_instance_private (self);
  return priv->devnum;
}

guint32
pb_device_get_devid (PbDevice *self)
{
  PbDevicePrivate *priv = pb_device_get_instance_private (self);
  return (priv->busnum << 16) | (priv->devnum & 0xffff);
}

const char *
pb_device_get_description (PbDevice *self)
{
  PbDevicePrivate *priv = pb_device_get_instance_private (self);
  return priv->description != NULL ? priv->description : "USB device";
}

void
pb_device_set_description (PbDevice *self, const char *description)
{
  PbDevicePrivate *priv = pb_device_get_instance_private (self);
  g_free (priv->description);
  priv->description = g_strdup (description);
}

void
pb_device_describe (PbDevice *self, PbUsbipDeviceRecord *record)
{
  PbDevicePrivate *priv = pb_device_get_instance_private (self);

  g_return_if_fail (PB_IS_DEVICE (self));

  memset (record, 0, sizeof *record);
  PB_DEVICE_GET_CLASS (self)->describe (self, record);
  g_strlcpy (record->busid, priv->busid != NULL ? priv->busid : "", sizeof record->busid);
  if (record->path[0] == '\0')
    g_snprintf (record->path, sizeof record->path, "/sys/devices/plugboard/usb%u/%s",
                priv->busnum, record->busid);
  record->busnum = priv->busnum;
  record->devnum = priv->devnum;
}

PbEndpointType
pb_device_get_endpoint_type (PbDevice *self, guint ep, PbUsbipDirection direction)
{
  g_return_val_if_fail (PB_IS_DEVICE (self), PB_ENDPOINT_UNKNOWN);
  if (ep == 0)
    return PB_ENDPOINT_CONTROL;
  if (ep > 15)
    return PB_ENDPOINT_UNKNOWN;
  return PB_DEVICE_GET_CLASS (self)->get_endpoint_type (self, ep, direction);
}

gboolean
pb_device_open (PbDevice *self, GError **error)
{
  PbDevicePrivate *priv = pb_device_get_instance_private (self);
  PbDeviceClass *klass = PB_DEVICE_GET_CLASS (self);

  g_return_val_if_fail (PB_IS_DEVICE (self), FALSE);

  if (priv->vanished)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_NOT_FOUND, "device %s was unplugged",
                   priv->busid != NULL ? priv->busid : "(unnamed)");
      return FALSE;
    }
  if (priv->open)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_BUSY, "device %s is already in use",
                   priv->busid != NULL ? priv->busid : "(unnamed)");
      return FALSE;
    }
  if (klass->open != NULL && !klass->open (self, error))
    return FALSE;
  priv->open = TRUE;
  return TRUE;
}

void
pb_device_close (PbDevice *self)
{
  PbDevicePrivate *priv = pb_device_get_instance_private (self);

  g_return_if_fail (PB_IS_DEVICE (self));
  if (!priv->open)
    return;
  priv->open = FALSE;
  if (PB_DEVICE_GET_CLASS (self)->close != NULL)
    PB_DEVICE_GET_CLASS (self)->close (self);
}

void
pb_device_submit (PbDevice *self, PbUrb *urb)
{
  PB_DEVICE_GET_CLASS (self)->submit (self, urb);
}

void
pb_device_cancel (PbDevice *self, PbUrb *urb)
{
  if (PB_DEVICE_GET_CLASS (self)->cancel != NULL)
    PB_DEVICE_GET_CLASS (self)->cancel (self, urb);
}

gboolean
pb_device_is_busy (PbDevice *self)
{
  PbDevicePrivate *priv = pb_device_get_instance_private (self);
  return priv->open;
}

void
pb_device_vanished (PbDevice *self)
{
  PbDevicePrivate *priv = pb_device_get_instance_private (self);

  g_return_if_fail (PB_IS_DEVICE (self));
  if (priv->vanished)
    return;
  priv->vanished = TRUE;
  g_signal_emit (self, signals[SIGNAL_VANISHED], 0);
}

gboolean
pb_device_is_vanished (PbDevice *self)
{
  PbDevicePrivate *priv = pb_device_get_instance_private (self);
  return priv->vanished;
}
