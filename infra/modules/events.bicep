// The subscription's ARM events, and (once the function exists) the subscription that sends
// Microsoft.Web writes to on-deploy.
param functionAppId string
param subscribeEvents bool

// The function that takes them: function-definitions/on-deploy (eventGridTrigger).
var onDeployFunction = 'on-deploy'

resource topic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: 'evgt-vnet-migrate-${uniqueString(subscription().id)}'
  // Subscription events are global.
  location: 'global'
  properties: {
    source: subscription().id
    topicType: 'Microsoft.Resources.Subscriptions'
  }
}

resource toOnDeploy 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = if (subscribeEvents) {
  parent: topic
  name: 'vnet-migrate-on-deploy'
  properties: {
    eventDeliverySchema: 'EventGridSchema'
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: '${functionAppId}/functions/${onDeployFunction}'
        maxEventsPerBatch: 1
      }
    }
    filter: {
      // DESIGN §7: a successful ARM write to a site, a slot or a VNet connection may add a
      // gateway-based integration; on-deploy decides whether it is in scope and not ours.
      includedEventTypes: [
        'Microsoft.Resources.ResourceWriteSuccess'
      ]
      advancedFilters: [
        {
          operatorType: 'StringIn'
          key: 'data.operationName'
          values: [
            'Microsoft.Web/sites/write'
            'Microsoft.Web/sites/slots/write'
            'Microsoft.Web/sites/virtualNetworkConnections/write'
            'Microsoft.Web/sites/slots/virtualNetworkConnections/write'
          ]
        }
      ]
    }
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
  }
}
