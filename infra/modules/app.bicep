// The project's own resources: identity, Service Bus, storage (host + ledger), monitoring, the
// plan and the function app, and the data-plane roles the identity needs on them (and on
// nothing else).
param environmentName string
param location string
param token string
param operatorPrincipalId string

// The names the code expects; tests/it/infra.rs holds them to the code's constants.
var stepsQueueName = 'migration-steps'
// The Table ledger's tables (src/pipeline/table/ledger.rs creates them too when missing).
var ledgerTables = ['runs', 'targets', 'steplog']
var policyFile = 'rollout.json'

var tags = { 'azd-env-name': environmentName }

// Built-in roles (Azure built-in roles reference).
var serviceBusDataSender = '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39'
var serviceBusDataReceiver = '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0'
var storageTableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
// The Functions host keeps its leases (timer singleton, session listeners' checkpoints) and
// keys in blobs of AzureWebJobsStorage; with an identity it needs Blob Data Owner there.
var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-vnet-migrate-${token}'
  location: location
  tags: tags
}

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-vnet-migrate-${token}'
  location: location
  tags: tags
  properties: {
    sku: { name: 'PerGB2018' }
    retentionInDays: 30
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-vnet-migrate-${token}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
    // Telemetry only with an Entra token (APPLICATIONINSIGHTS_AUTHENTICATION_STRING below).
    DisableLocalAuth: true
  }
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: 'stvnetmig${take(token, 15)}'
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: { name: 'Standard_LRS' }
  properties: {
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    defaultToOAuthAuthentication: true
  }
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource ledger 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [for t in ledgerTables: {
  parent: tables
  name: t
}]

resource bus 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' = {
  name: 'sb-vnet-migrate-${token}'
  location: location
  tags: tags
  // Standard: sessions, duplicate detection and scheduled messages need Standard or Premium.
  sku: { name: 'Standard', tier: 'Standard' }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
  }
}

resource stepsQueue 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' = {
  parent: bus
  name: stepsQueueName
  properties: {
    // One session per app (SessionId = target): its steps run one at a time, in order.
    requiresSession: true
    // A step re-sent with the same MessageId (a retried send, a redelivered step sending its
    // successor again) is dropped by the broker within this window.
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT1H'
    // Longer than a step's per-invocation deadline, renewed by the host up to
    // maxAutoLockRenewalDuration (host.json).
    lockDuration: 'PT5M'
    // A step the handler keeps failing is dead-lettered; `replay --dlq` resends it.
    maxDeliveryCount: 10
    defaultMessageTimeToLive: 'P14D'
    deadLetteringOnMessageExpiration: true
  }
}

// Dedicated (App Service) plan, Linux. Custom handlers run on every Functions plan, and the
// Service Bus (sessions) and Event Grid triggers on all of them; the plan is chosen for "no
// keys": Consumption and Elastic Premium keep the app's content on an Azure Files share reached
// only with a storage key (the content-share connection setting; Azure Files over SMB takes no
// managed identity there: microsoft/startstopv2-deployments#152,
// Azure/azure-functions-host#10050), while a Dedicated plan runs from the deployed package and
// needs no content share. Always On keeps the rollout-tick timer and the session listeners
// running. Flex Consumption (runtime `custom` exists there) was not chosen: its behaviour with
// session-enabled Service Bus triggers and custom handlers is unverified here.
resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: 'asp-vnet-migrate-${token}'
  location: location
  tags: tags
  kind: 'linux'
  sku: { name: 'P0v3', tier: 'Premium0V3' }
  properties: { reserved: true }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: 'func-vnet-migrate-${token}'
  location: location
  tags: union(tags, { 'azd-service-name': 'vnet-migrate' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identity.id}': {} }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    keyVaultReferenceIdentity: identity.id
    siteConfig: {
      alwaysOn: true
      ftpsState: 'Disabled'
      minTlsVersion: '1.2'
      appSettings: [
        { name: 'FUNCTIONS_EXTENSION_VERSION', value: '~4' }
        { name: 'FUNCTIONS_WORKER_RUNTIME', value: 'custom' }
        // Host storage through the identity: no AzureWebJobsStorage connection string.
        { name: 'AzureWebJobsStorage__accountName', value: storage.name }
        { name: 'AzureWebJobsStorage__credential', value: 'managedidentity' }
        { name: 'AzureWebJobsStorage__clientId', value: identity.properties.clientId }
        // The `step` trigger's connection (function.json `connection: ServiceBusConnection`),
        // also read by `serve` for its own sends.
        { name: 'ServiceBusConnection__fullyQualifiedNamespace', value: '${bus.name}.servicebus.windows.net' }
        { name: 'ServiceBusConnection__credential', value: 'managedidentity' }
        { name: 'ServiceBusConnection__clientId', value: identity.properties.clientId }
        // The ingestion endpoint, not a credential: local auth is disabled on the component, so
        // telemetry is accepted only with the identity's token.
        { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: insights.properties.ConnectionString }
        { name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING', value: 'ClientId=${identity.properties.clientId};Authorization=AAD' }
        // DESIGN §7 settings read by `vnet-migrate serve`.
        { name: 'VNET_MIGRATE_ARM_ENDPOINT', value: environment().resourceManager }
        { name: 'VNET_MIGRATE_CREDENTIAL', value: 'managed-identity' }
        { name: 'AZURE_CLIENT_ID', value: identity.properties.clientId }
        { name: 'VNET_MIGRATE_STEPS_QUEUE', value: stepsQueue.name }
        { name: 'VNET_MIGRATE_LEDGER', value: 'https://${storage.name}.table.${environment().suffixes.storage}' }
        { name: 'VNET_MIGRATE_POLICY', value: policyFile }
        // Our own writes come back as events: on-deploy ignores those made by this principal.
        { name: 'VNET_MIGRATE_PRINCIPAL_ID', value: identity.properties.principalId }
      ]
    }
  }
}

// Data-plane roles, each on the one resource it is for.
resource sendSteps 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(stepsQueue.id, identity.id, serviceBusDataSender)
  scope: stepsQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataSender)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource receiveSteps 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(stepsQueue.id, identity.id, serviceBusDataReceiver)
  scope: stepsQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataReceiver)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource ledgerWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identity.id, storageTableDataContributor)
  // The account holds only this project's ledger tables and the host's blobs.
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributor)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource hostStorage 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identity.id, storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwner)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource telemetry 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(insights.id, identity.id, monitoringMetricsPublisher)
  scope: insights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// The operator's CLI (`rollout start|pause|…`, `replay --dlq`) sends to and reads the queue
// and the ledger, as the function does; nothing else.
resource operatorSend 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(stepsQueue.id, operatorPrincipalId, serviceBusDataSender)
  scope: stepsQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataSender)
    principalId: operatorPrincipalId
  }
}

resource operatorReceive 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(stepsQueue.id, operatorPrincipalId, serviceBusDataReceiver)
  scope: stepsQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataReceiver)
    principalId: operatorPrincipalId
  }
}

resource operatorLedger 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(storage.id, operatorPrincipalId, storageTableDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributor)
    principalId: operatorPrincipalId
  }
}

output principalId string = identity.properties.principalId
output functionAppId string = functionApp.id
output functionAppName string = functionApp.name
output serviceBusNamespace string = '${bus.name}.servicebus.windows.net'
output stepsQueue string = stepsQueue.name
output ledgerUrl string = 'https://${storage.name}.table.${environment().suffixes.storage}'
